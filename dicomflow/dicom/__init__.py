"""DICOM plumbing: the DICOMweb client layer, element and DICOM JSON access, UIDs, slice geometry, volume
assembly, Orthanc REST lookups. Needs no torch."""
