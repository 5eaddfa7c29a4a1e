"""DICOM SR (TID 1500 Measurement Report, Comprehensive 3D SR) of the findings, via highdicom.

Segmentation: one measurement group per structure with its volume in mm³ (UCUM ``mm3``),
referencing the SEG segment when a SEG was made, plus one group for the total, measured on the
SEG (or on the source images when there is none); and, given the label map, one planar group per structure
and one for all of them together: the outline of the largest cross-section on its key slice (a closed
POLYLINE SCOORD on that image, :mod:`dicomflow.inference.sections`) with its area in mm² and the volume, which
is what viewers such as OHIF draw and list (they do not display volumetric groups without coordinates).
Classification: one group per class with the probability (UCUM ``1``) and Present/Absent at the threshold,
referencing the source images. The source images are always in the evidence, so the report sits beside its
series in a viewer.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import highdicom as hd
import numpy as np
from pydicom import Dataset
from pydicom.sr.codedict import codes

from dicomflow.dicom.elements import MANUFACTURER
from dicomflow.dicom.seg import algorithm_version, coded
from dicomflow.dicom.structures import ANATOMICAL_STRUCTURE, PRIVATE_SCHEME, Structure
from dicomflow.inference.sections import KeySection, key_sections

SR_SERIES_NUMBER = 9102
PROBABILITY = hd.sr.CodedConcept("122157", "DCM", "Probability")


# dicomflow's own concepts (private coding scheme 99DICOMFLOW): no standard code says these
UNLIKE_TRAINING = hd.sr.CodedConcept("OOD", "99DICOMFLOW", "Input unlike the model's training data")
EXPECTED_DICE = hd.sr.CodedConcept("EXPDICE", "99DICOMFLOW", "Dice on the model's test split")
EXPECTED_VOLUME_ERROR = hd.sr.CodedConcept("EXPVOLERR", "99DICOMFLOW",
                                           "Mean absolute volume error on the model's test split")


def _quality_evaluations(quality: dict | None) -> list:
    """Yes/No for "input unlike the training data" (nothing when the model cannot tell)."""
    if not quality or quality.get("outOfDistribution") is None:
        return []
    return [hd.sr.QualitativeEvaluation(name=UNLIKE_TRAINING,
                                        value=codes.SCT.Yes if quality["outOfDistribution"] else codes.SCT.No)]


def _expected_errors(expected: dict | None, algo: hd.sr.AlgorithmIdentification) -> list:
    """The structure's Dice and volume error on the model's test split, as measurements beside its volume."""
    if not expected:
        return []
    out = []
    if expected.get("dice") is not None and math.isfinite(expected["dice"]):
        out.append(hd.sr.Measurement(name=EXPECTED_DICE, value=float(expected["dice"]), unit=codes.UCUM.NoUnits,
                                     algorithm_id=algo))
    error = expected.get("meanAbsVolumeErrorPct")
    if error is not None and math.isfinite(error):
        out.append(hd.sr.Measurement(name=EXPECTED_VOLUME_ERROR, value=float(error), unit=codes.UCUM.Percent,
                                     algorithm_id=algo))
    return out


def class_concept(name: str) -> hd.sr.CodedConcept:
    """A finding class as a private code (the class names are the training labels)."""
    value = "".join(ch for ch in name.upper() if ch.isalnum())[:16] or "CLASS"
    return hd.sr.CodedConcept(value, PRIVATE_SCHEME, name)


def _observation_context(model_name: str) -> hd.sr.ObservationContext:
    device = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=hd.UID(), name=model_name[:64], manufacturer_name=MANUFACTURER, model_name=model_name[:64]),
    )
    return hd.sr.ObservationContext(observer_device_context=device)


def _source_images(images: Sequence[Dataset]) -> list[hd.sr.SourceImageForMeasurementGroup]:
    return [hd.sr.SourceImageForMeasurementGroup(ds.SOPClassUID, ds.SOPInstanceUID) for ds in images]


def _planar_group(name: str, finding: hd.sr.CodedConcept, section: KeySection, volume_mm3: float | None,
                  image: Dataset, algo: hd.sr.AlgorithmIdentification) -> Any:
    """A structure's largest cross-section on its key slice: the outline, its area and the structure's volume."""
    region = hd.sr.ImageRegion(graphic_type=hd.sr.GraphicTypeValues.POLYLINE, graphic_data=section.outline,
                               source_image=hd.sr.SourceImageForRegion(image.SOPClassUID, image.SOPInstanceUID))
    measurements = [hd.sr.Measurement(name=codes.SCT.Area, value=section.area_mm2, unit=codes.UCUM.SquareMillimeter,
                                      algorithm_id=algo)]
    if volume_mm3 is not None:
        measurements.append(hd.sr.Measurement(name=codes.SCT.Volume, value=float(volume_mm3),
                                              unit=codes.UCUM.CubicMillimeter, algorithm_id=algo))
    return hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=hd.UID(), identifier=f"{name} largest section"[:64]),
        referenced_region=region, finding_type=finding, algorithm_id=algo, measurements=measurements)


def _section_groups(label: np.ndarray, source_images: Sequence[Dataset], structures: Sequence[Structure],
                    volumes: dict, total_type: hd.sr.CodedConcept,
                    algo: hd.sr.AlgorithmIdentification) -> list:
    """The planar groups of every structure in ``label`` (slices as ``source_images``), then of all together."""
    spacing = [tuple(ds.PixelSpacing) for ds in source_images]
    groups = []
    sections = key_sections(label, [st.value for st in structures], spacing)
    for st in structures:
        if st.value in sections:
            section = sections[st.value]
            groups.append(_planar_group(st.name, coded(st.type_code), section, volumes.get(st.name),
                                        source_images[section.slice_index], algo))
    together = key_sections(np.isin(label, [st.value for st in structures]).astype(np.uint8), [1], spacing)
    if len(structures) > 1 and 1 in together:
        section = together[1]
        groups.append(_planar_group("total", total_type, section, volumes.get("total"),
                                    source_images[section.slice_index], algo))
    return groups


def build_sr(source_images: Sequence[Dataset], findings: dict, task: str, model_name: str,
             seg: Dataset | None = None, structures: Sequence[Structure] = (),
             series_uid: str | None = None, model_version: str | None = None,
             label: np.ndarray | None = None) -> Dataset:
    """A TID 1500 measurement report for ``findings`` (see :mod:`dicomflow.inference.findings`); every
    finding names the model and its version (:func:`dicomflow.dicom.seg.algorithm_version`). ``label``, the
    segmentation on the grid of ``source_images`` (in their order), adds the planar groups."""
    algo = hd.sr.AlgorithmIdentification(name=model_name[:64], version=algorithm_version(model_version))
    groups: list = []
    if task == "segmentation3d":
        # The total is measured on the SEG when there is one: one reference instead of one per slice.
        sources = _source_images([seg] if seg is not None else source_images)
        volumes = findings["volumesMm3"]
        by_name = {st.name: st for st in structures}
        types = {st.type_code for st in structures}
        total_type = coded(types.pop() if len(types) == 1 else ANATOMICAL_STRUCTURE)  # one kind of structure
        checks = _quality_evaluations(findings.get("quality"))
        expected = (findings.get("quality") or {}).get("expected", {}).get("structures", {})
        for name, mm3 in volumes.items():
            measurement = hd.sr.Measurement(name=codes.SCT.Volume, value=float(mm3),
                                            unit=codes.UCUM.CubicMillimeter, algorithm_id=algo)
            measurements = [measurement, *_expected_errors(expected.get(name), algo)]
            tracking = hd.sr.TrackingIdentifier(uid=hd.UID(), identifier=f"{name} volume"[:64])
            finding = total_type if name not in by_name else coded(by_name[name].type_code)
            if seg is not None and name in by_name:
                groups.append(hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
                    tracking_identifier=tracking,
                    referenced_segment=hd.sr.ReferencedSegment(
                        sop_class_uid=seg.SOPClassUID, sop_instance_uid=seg.SOPInstanceUID,
                        segment_number=by_name[name].value,
                        source_series=hd.sr.SourceSeriesForSegmentation(source_images[0].SeriesInstanceUID)),
                    finding_type=finding, algorithm_id=algo, measurements=measurements,
                    qualitative_evaluations=checks))
            else:
                groups.append(hd.sr.MeasurementsAndQualitativeEvaluations(
                    tracking_identifier=tracking, finding_type=finding, algorithm_id=algo,
                    measurements=measurements, source_images=sources, qualitative_evaluations=checks))
        if label is not None and structures:  # first: a viewer opens an SR at its first measurement with a place
            groups = _section_groups(label, source_images, structures, volumes, total_type, algo) + groups
        procedure = codes.SCT.ImagingProcedure
        title = codes.cid7021.ImagingMeasurementReport
    else:
        sources = _source_images(source_images)
        threshold = findings.get("threshold", 0.5)
        checks = _quality_evaluations(findings.get("quality"))
        for name, p in findings["probabilities"].items():
            groups.append(hd.sr.MeasurementsAndQualitativeEvaluations(
                tracking_identifier=hd.sr.TrackingIdentifier(uid=hd.UID(), identifier=name[:64]),
                finding_type=class_concept(name),
                algorithm_id=algo,
                measurements=[hd.sr.Measurement(name=PROBABILITY, value=float(p), unit=codes.UCUM.NoUnits,
                                                algorithm_id=algo)],
                qualitative_evaluations=[hd.sr.QualitativeEvaluation(
                    name=codes.DCM.Finding, value=codes.SCT.Present if p >= threshold else codes.SCT.Absent),
                    *checks],
                source_images=sources))
        procedure = codes.SCT.ImagingProcedure
        title = codes.cid7021.ImagingMeasurementReport
    report = hd.sr.MeasurementReport(
        observation_context=_observation_context(model_name),
        procedure_reported=procedure,
        imaging_measurements=groups,
        title=title,
    )
    evidence = list(source_images) + ([seg] if seg is not None else [])
    return hd.sr.Comprehensive3DSR(
        evidence=evidence,
        content=report,
        series_instance_uid=series_uid or hd.UID(),
        series_number=SR_SERIES_NUMBER,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer=MANUFACTURER,
        is_complete=True,
        series_description=f"AI findings ({model_name})"[:64],
    )
