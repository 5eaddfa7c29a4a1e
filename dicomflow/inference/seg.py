"""DICOM Segmentation (BINARY, one segment per structure) of a predicted label volume, via highdicom."""

from __future__ import annotations

from collections.abc import Sequence

import highdicom as hd
import numpy as np
from pydicom import Dataset
from pydicom.sr.codedict import codes

from dicomflow import __version__
from dicomflow.modeling.structures import Code, Structure

MANUFACTURER = "dicomflow"
SEG_SERIES_NUMBER = 9101

def coded(code: Code) -> hd.sr.CodedConcept:
    return hd.sr.CodedConcept(code.value, code.scheme, code.meaning)


def algorithm_identification(model_name: str) -> hd.AlgorithmIdentificationSequence:
    return hd.AlgorithmIdentificationSequence(
        name=model_name[:64], family=codes.cid7162.ArtificialIntelligence, version=__version__)


def build_seg(source_images: Sequence[Dataset], label_volume: np.ndarray, structures: Sequence[Structure],
              model_name: str, series_uid: str | None = None) -> Dataset:
    """A BINARY SEG: ``label_volume`` is (frames, rows, cols), frame i on ``source_images[i]``.

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
    algo = algorithm_identification(model_name)
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=st.value,
            segment_label=st.label[:64],
            segmented_property_category=coded(st.category),
            segmented_property_type=coded(st.type_code),
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algo,
            tracking_uid=hd.UID(),
            tracking_id=f"{model_name} {st.name}"[:64],
        )
        for st in sorted(structures, key=lambda st: st.value)
    ]
    seg = hd.seg.Segmentation(
        source_images=sources,
        pixel_array=mask,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=series_uid or hd.UID(),
        series_number=SEG_SERIES_NUMBER,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer=MANUFACTURER,
        manufacturer_model_name=model_name[:64],
        software_versions=__version__,
        device_serial_number="0",
        series_description=f"AI segmentation ({model_name})"[:64],
        omit_empty_frames=True,
    )
    return seg
