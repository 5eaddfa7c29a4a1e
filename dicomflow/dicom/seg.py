"""DICOM Segmentation of a label volume (BINARY, one segment per structure), and a SEG read back as one, via highdicom.

The same objects carry a model's output (algorithm type AUTOMATIC, the model named) and labels
people drew or brought (MANUAL), so training and serving read and write one format.
"""

from __future__ import annotations

from collections.abc import Sequence

import highdicom as hd
import numpy as np
from pydicom import Dataset
from pydicom.sr.codedict import codes

from dicomflow import __version__
from dicomflow.dicom.elements import MANUFACTURER
from dicomflow.dicom.structures import Code, Structure, StructureError

SEG_SERIES_NUMBER = 9101
#: Display colours of segments 1, 2, ... (RecommendedDisplayCIELabValue; viewers use them for the overlay):
#: Tableau 10's red, green, blue, orange, purple, brown, pink, grey, olive, cyan, far apart on a grey image.
SEGMENT_COLOURS = ((214, 39, 40), (44, 160, 44), (31, 119, 180), (255, 127, 14), (148, 103, 189), (140, 86, 75),
                   (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207))


def segment_colour(segment_number: int) -> hd.color.CIELabColor:
    return hd.color.CIELabColor.from_rgb(*SEGMENT_COLOURS[(segment_number - 1) % len(SEGMENT_COLOURS)])


def coded(code: Code) -> hd.sr.CodedConcept:
    return hd.sr.CodedConcept(code.value, code.scheme, code.meaning)


def algorithm_version(model_version: str | None) -> str:
    """What a result names as its algorithm's version: the registered model's version, or, for a model
    deployed without the Model Registry, that it is unregistered and which dicomflow ran it."""
    return (str(model_version) if model_version else f"unregistered (dicomflow {__version__})")[:64]


def algorithm_identification(model_name: str, model_version: str | None = None) -> hd.AlgorithmIdentificationSequence:
    return hd.AlgorithmIdentificationSequence(
        name=model_name[:64], family=codes.cid7162.ArtificialIntelligence, version=algorithm_version(model_version))


def build_seg(source_images: Sequence[Dataset], label_volume: np.ndarray, structures: Sequence[Structure],
              model_name: str | None, series_uid: str | None = None, *, model_version: str | None = None,
              series_description: str | None = None, sop_uid: str | None = None) -> Dataset:
    """A BINARY SEG: ``label_volume`` is (frames, rows, cols), frame i on ``source_images[i]``.

    ``model_name`` names the algorithm that made the labels (segments AUTOMATIC); None means people
    did (MANUAL, no algorithm).

    Each structure (the model artifact's: label value, name, segment label, codes) becomes one
    segment, empty ones included, so the segment numbers match the label values. Only the slices
    where something was found are handed to highdicom, which omits empty frames anyway but does
    ~0.5 ms of work per source image (positions, references): the SEG costs what was found, not the
    series length. An empty result is one empty frame per segment on the middle slice (highdicom
    would keep every frame).
    """
    if len(source_images) != label_volume.shape[0]:
        raise ValueError(f"{label_volume.shape[0]} mask frames for {len(source_images)} source images")
    label = np.asarray(label_volume)
    found = np.flatnonzero(label.any(axis=(1, 2)))  # only these slices are copied
    mask = label[found].astype(np.uint8)
    mask[mask > max(st.value for st in structures)] = 0
    marked = mask.any(axis=(1, 2))
    keep, mask = found[marked], mask[marked]
    if not keep.size:
        keep, mask = np.array([len(label) // 2]), np.zeros((1, *label.shape[1:]), np.uint8)
    sources = [source_images[int(i)] for i in keep]
    algo = algorithm_identification(model_name, model_version) if model_name else None
    kind = hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC if model_name else hd.seg.SegmentAlgorithmTypeValues.MANUAL
    maker = model_name or "label import"
    descriptions = []
    for st in sorted(structures, key=lambda st: st.value):
        description = hd.seg.SegmentDescription(
            segment_number=st.value,
            segment_label=st.label[:64],
            segmented_property_category=coded(st.category),
            segmented_property_type=coded(st.type_code),
            algorithm_type=kind,
            algorithm_identification=algo,
            tracking_uid=hd.UID(),
            tracking_id=f"{maker} {st.name}"[:64],
            display_color=segment_colour(st.value),
        )
        description.SegmentDescription = st.name[:64]  # the structure's name, read back by read_seg
        descriptions.append(description)
    seg = hd.seg.Segmentation(
        source_images=sources,
        pixel_array=mask,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=series_uid or hd.UID(),
        series_number=SEG_SERIES_NUMBER,
        sop_instance_uid=sop_uid or hd.UID(),
        instance_number=1,
        manufacturer=MANUFACTURER,
        manufacturer_model_name=maker[:64],
        software_versions=__version__,
        device_serial_number="0",
        series_description=(series_description or (f"AI segmentation ({model_name})" if model_name
                                                    else "Segmentation"))[:64],
        omit_empty_frames=True,
    )
    return seg


def read_seg(seg: Dataset, source_sop_uids: Sequence[str]) -> tuple[np.ndarray, list[Structure]]:
    """A SEG as a label volume on the source images ``source_sop_uids`` (in that order) and its structures.

    Voxel value ``i`` is segment ``i`` (where segments overlap, the higher number wins). A SEG that
    references none of the images, or names a segment number other than 1..n, is refused.
    """
    parsed = hd.seg.Segmentation.from_dataset(seg, copy=False)
    descriptions = sorted(parsed.SegmentSequence, key=lambda d: int(d.SegmentNumber))
    numbers = [int(d.SegmentNumber) for d in descriptions]
    if numbers != list(range(1, len(numbers) + 1)):
        raise StructureError(f"SEG {seg.SOPInstanceUID} numbers its segments {numbers}; expected 1..{len(numbers)}")
    referenced = {str(uid) for _, _, uid in parsed.get_source_image_uids()}
    if not referenced & set(source_sop_uids):
        raise StructureError(f"SEG {seg.SOPInstanceUID} references none of the series' images")
    present = [uid for uid in source_sop_uids if uid in referenced]
    pixels = parsed.get_pixels_by_source_instance(source_sop_instance_uids=present, combine_segments=True,
                                                  skip_overlap_checks=True)
    label = np.zeros((len(source_sop_uids), *pixels.shape[1:]), np.uint8)
    index = {uid: i for i, uid in enumerate(source_sop_uids)}
    for k, uid in enumerate(present):
        label[index[uid]] = pixels[k]
    structures = []
    for d in descriptions:
        shown = str(d.get("SegmentLabel", "") or f"segment {d.SegmentNumber}")
        structures.append(Structure(int(d.SegmentNumber), str(d.get("SegmentDescription", "") or shown), shown,
                                    _code(d.SegmentedPropertyTypeCodeSequence[0]),
                                    _code(d.SegmentedPropertyCategoryCodeSequence[0])))
    return label, structures


def _code(item: Dataset) -> Code:
    return Code(str(item.CodeValue), str(item.CodingSchemeDesignator), str(item.CodeMeaning))
