"""A PDF document as a DICOM Encapsulated PDF (PS3.3 A.45.1) in the study of the images it is about, via pydicom.

The study's patient and study attributes are copied from one of its images; the document gets a series of its
own (Modality DOC), says it was made by a program (SC Equipment, ConversionType SYN) and carries its title.
"""

from __future__ import annotations

import datetime as dt

import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from dicomflow import __version__
from dicomflow.dicom.elements import MANUFACTURER

ENCAPSULATED_PDF = "1.2.840.10008.5.1.4.1.1.104.1"
PDF_SERIES_NUMBER = 9103
#: copied from the source image: Patient and General Study modules
_STUDY_KEYWORDS = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyInstanceUID", "StudyDate",
                   "StudyTime", "ReferringPhysicianName", "StudyID", "AccessionNumber", "StudyDescription")


def encapsulated_pdf(pdf: bytes, source: Dataset, title: str, series_uid: str | None = None,
                     series_description: str | None = None) -> Dataset:
    """``pdf`` (the file's bytes) as an Encapsulated PDF instance in ``source``'s study; ValueError for bytes
    that are not a PDF."""
    if not pdf.startswith(b"%PDF-"):
        raise ValueError("not a PDF document (no %PDF- header)")
    now = dt.datetime.now(dt.UTC)
    ds = Dataset()
    for keyword in _STUDY_KEYWORDS:
        value = source.get(keyword)
        setattr(ds, keyword, value if value is not None else "")
    ds.SOPClassUID = ENCAPSULATED_PDF
    ds.SOPInstanceUID = generate_uid()
    ds.Modality = "DOC"
    ds.SeriesInstanceUID = series_uid or generate_uid()
    ds.SeriesNumber = PDF_SERIES_NUMBER
    ds.SeriesDescription = (series_description or title)[:64]
    ds.Manufacturer = MANUFACTURER
    ds.SoftwareVersions = __version__
    ds.ConversionType = "SYN"
    ds.InstanceNumber = 1
    ds.ContentDate = ds.InstanceCreationDate = now.strftime("%Y%m%d")
    ds.ContentTime = ds.InstanceCreationTime = now.strftime("%H%M%S")
    ds.AcquisitionDateTime = now.strftime("%Y%m%d%H%M%S")
    ds.BurnedInAnnotation = "YES"  # the report names the patient
    ds.DocumentTitle = title[:64]
    ds.ConceptNameCodeSequence = []
    ds.MIMETypeOfEncapsulatedDocument = "application/pdf"
    ds.EncapsulatedDocument = pdf + (b"\0" if len(pdf) % 2 else b"")  # OB values have an even length
    ds.EncapsulatedDocumentLength = len(pdf)
    ds.SpecificCharacterSet = "ISO_IR 192"
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = pydicom.uid.PYDICOM_IMPLEMENTATION_UID
    ds.file_meta = meta
    return ds


def pdf_bytes(ds: Dataset) -> bytes:
    """The PDF an Encapsulated PDF instance holds, without the padding byte."""
    return bytes(ds.EncapsulatedDocument)[: int(ds.get("EncapsulatedDocumentLength") or len(ds.EncapsulatedDocument))]
