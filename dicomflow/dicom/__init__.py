"""DICOM plumbing: DICOMweb client layer, element access, slice geometry, volume assembly, Orthanc REST lookups."""
