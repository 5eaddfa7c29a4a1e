"""A series labeled by outlining: the workers' outlines -> one DICOM SEG stored into the study.

Each worker's freehand outlines (:mod:`dicomflow.groundtruth.masks`) become a label volume on the series' own
grid, slices in the order the series' geometry gives (along the slice normal, so an oblique or reversed series
is handled like any other); the volumes are fused by per-voxel majority, and the result is written as a
BINARY SEG with MANUAL segments (highdicom) into the series' study. Its UIDs derive from the series and the
labeling job, so a consolidation that runs again stores the same SEG, which the PACS keeps once. The content
added to the object's consolidated label is the shape ``dicomflow label import`` gives, so ``dataset export``
and ``segmentation3d`` training read it like any other SEG label.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from dicomflow.dicom import dicomweb
from dicomflow.dicom.geometry import GeometryError, slice_order
from dicomflow.dicom.seg import build_seg
from dicomflow.dicom.structures import parse_structures
from dicomflow.dicom.uid import derived_uid
from dicomflow.groundtruth import masks

FUSION = "per-voxel majority of the workers (more than half), else background"


def consolidate_series(client: Any, ref: Mapping[str, str], answers: Sequence[Any], definitions: Sequence[Any],
                       job: str) -> dict[str, Any]:
    """Fuse the outlines of ``answers`` on the series ``ref`` (its Study and Series Instance UIDs) into a SEG of
    the structures ``definitions`` (names, or definitions with codes: :mod:`dicomflow.dicom.structures`), store
    it into the study through ``client`` and return what the consolidated label records of it."""
    parsed = parse_structures(definitions)
    structures = [st.name for st in parsed]
    study, series = ref["StudyInstanceUID"], ref["SeriesInstanceUID"]
    slices = _slices(dicomweb.retrieve_series(client, study, series), series)
    order = [str(ds.SOPInstanceUID) for ds in slices]
    shape = (len(slices), int(slices[0].Rows), int(slices[0].Columns))
    volumes = {a.worker_id: masks.worker_volume(a.rois, order, shape, structures) for a in answers if a.rois}
    fused = masks.fuse(list(volumes.values()), len(structures))
    report = masks.agreement(volumes, fused, structures)
    seg = build_seg(slices, fused, parsed, None,
                    series_uid=derived_uid("groundtruth-seg-series", series, job),
                    sop_uid=derived_uid("groundtruth-seg", series, job),
                    series_description="Consolidated annotation")
    dicomweb.store(client, [seg])
    out = {"segmentation": {"StudyInstanceUID": study, "SeriesInstanceUID": str(seg.SeriesInstanceUID),
                            "SOPInstanceUID": str(seg.SOPInstanceUID)},
           "structures": list(structures), "segmentationAgreement": report, "fusion": FUSION,
           "segmentationWorkers": sorted(volumes)}
    suggested = next((a.suggested_outlines for a in answers if a.suggested_outlines), None)
    if suggested:  # how far the people's mask is from the model's: what the suggestions saved, or did not
        model = masks.worker_volume(suggested, order, shape, structures)
        out["suggestionDice"] = {name: masks.rounded(masks.dice(model, fused, i))
                                 for i, name in enumerate(structures, start=1)}
    return out


def _slices(datasets: Sequence[Any], series: str) -> list[Any]:
    """The series' single-frame images in slice order (along the normal, else by InstanceNumber), all of one
    size; GeometryError says what is wrong with a series that cannot carry one mask."""
    images = [ds for ds in datasets if "PixelData" in ds or "Rows" in ds]
    if not images:
        raise GeometryError(f"series {series} holds no images to outline")
    if any(int(ds.get("NumberOfFrames", 1) or 1) > 1 for ds in images):
        raise GeometryError(f"series {series} has multi-frame images; outlines are taken on single-frame series")
    if len({(int(ds.Rows), int(ds.Columns)) for ds in images}) > 1:
        raise GeometryError(f"the images of series {series} differ in size; they do not form one grid")
    order = slice_order([ds.get("ImagePositionPatient") for ds in images],
                        [ds.get("ImageOrientationPatient") for ds in images],
                        [ds.get("InstanceNumber") for ds in images])
    return [images[i] for i in order]
