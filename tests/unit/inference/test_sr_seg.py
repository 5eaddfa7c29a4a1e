"""SR (TID 1500) and SEG built from a synthetic volume pass dciodvfy; findings arithmetic."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from model_helpers import dciodvfy_errors

from dicomflow.demo import synthetic
from dicomflow.dicom.seg import build_seg
from dicomflow.dicom.structures import parse_structures
from dicomflow.inference import findings as F
from dicomflow.inference.sr import build_sr

STRUCTURES = parse_structures(synthetic.HIPPOCAMPUS_STRUCTURES)


@pytest.fixture(scope="module")
def series() -> synthetic.SyntheticSeries:
    return synthetic.hippocampus_series(1, seed=3, shape=(12, 24, 20))[0]


def test_volumes_from_label_counts() -> None:
    label = np.zeros((4, 5, 6), np.uint8)
    label[0, :2, :3] = 1
    label[1, 0, 0] = 2
    out = F.segmentation_volumes(label, (2.0, 0.5, 0.5), ["anterior", "posterior"])
    assert out["volumesMm3"] == {"anterior": 3.0, "posterior": 0.5, "total": 3.5}
    background = F.segmentation_volumes(label, (2.0, 0.5, 0.5), ["background", "anterior"])
    assert background["volumesMm3"] == {"anterior": 3.0, "total": 3.0}  # a leading background is value 0


def test_classification_findings() -> None:
    probs = F.probabilities(np.array([0.0, 3.0, -3.0]))
    out = F.classification_findings(probs, ["A", "B", "C"])
    assert out["top"]["label"] == "B" and out["positive"] == ["A", "B"]
    assert F.probabilities(np.array([1.0, 1.0]), "softmax").tolist() == [0.5, 0.5]


def test_seg_and_sr_for_segmentation_pass_dciodvfy(series, tmp_path: Path) -> None:
    structures = STRUCTURES
    result = F.segmentation_volumes(series.label_volume, series.spacing, ["anterior", "posterior"])
    seg = build_seg(series.datasets, series.label_volume, structures, "unit-test-unet")
    assert seg.StudyInstanceUID == series.study_uid and seg.SegmentationType == "BINARY"
    assert [s.SegmentLabel for s in seg.SegmentSequence] == ["Hippocampus anterior", "Hippocampus posterior"]
    assert dciodvfy_errors(seg, tmp_path) == []
    sr = build_sr(series.datasets, result, "segmentation3d", "unit-test-unet", seg=seg, structures=structures)
    assert sr.StudyInstanceUID == series.study_uid
    assert dciodvfy_errors(sr, tmp_path) == []
    text = str(sr.ContentSequence)
    assert "mm3" in text and "Volume" in text
    # the SR references the source series and the SEG as evidence
    refs = {s.SeriesInstanceUID for e in sr.CurrentRequestedProcedureEvidenceSequence
            for s in e.ReferencedSeriesSequence}
    assert {series.series_uid, seg.SeriesInstanceUID} <= refs
    # the content references the SEG (segments, and the image the total was measured on), not each slice
    assert str(seg.SOPInstanceUID) in text
    assert not any(str(ds.SOPInstanceUID) in text for ds in series.datasets)
    # without a SEG: measurements reference the source images
    alone = build_sr(series.datasets, result, "segmentation3d", "unit-test-unet")
    assert dciodvfy_errors(alone, tmp_path) == []


def _planar_groups(sr) -> dict[str, dict]:
    """Tracking identifier -> {image, points, measurements (concept meaning -> value)} of the SR's planar groups."""
    out = {}
    [container] = [i for i in sr.ContentSequence if i.ConceptNameCodeSequence[0].CodeMeaning == "Imaging Measurements"]
    for group in container.ContentSequence:
        items = {i.ConceptNameCodeSequence[0].CodeMeaning: i for i in group.ContentSequence}
        region = items.get("Image Region")
        if region is None:
            continue
        out[items["Tracking Identifier"].TextValue] = {
            "image": region.ContentSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID,
            "type": region.GraphicType, "points": np.asarray(region.GraphicData, float).reshape(-1, 2),
            "measurements": {m.ConceptNameCodeSequence[0].CodeMeaning: float(m.MeasuredValueSequence[0].NumericValue)
                             for m in group.ContentSequence if m.ValueType == "NUM"}}
    return out


def test_sr_outlines_each_structure_on_its_largest_section_with_area_and_volume(series, tmp_path: Path) -> None:
    label = np.zeros_like(series.label_volume)
    label[3, 5:9, 4:8] = 1              # anterior: 16 pixels on slice 3, 4 on slice 4
    label[4, 5:7, 4:6] = 1
    label[7, 10:13, 6:9] = 2            # posterior: 9 pixels on slice 7, touching nothing
    rows, cols = (float(v) for v in series.datasets[0].PixelSpacing)
    result = F.segmentation_volumes(label, series.spacing, ["anterior", "posterior"])
    seg = build_seg(series.datasets, label, STRUCTURES, "unit-test-unet")
    sr = build_sr(series.datasets, result, "segmentation3d", "unit-test-unet", seg=seg, structures=STRUCTURES,
                  label=label)
    assert dciodvfy_errors(sr, tmp_path) == []
    groups = _planar_groups(sr)
    assert set(groups) == {"anterior largest section", "posterior largest section", "total largest section"}
    anterior, posterior, total = (groups[f"{n} largest section"] for n in ("anterior", "posterior", "total"))
    assert anterior["image"] == series.datasets[3].SOPInstanceUID
    assert posterior["image"] == series.datasets[7].SOPInstanceUID
    assert total["image"] == series.datasets[3].SOPInstanceUID  # 16 + 0 pixels there, against 9 on slice 7
    assert anterior["measurements"]["Area"] == pytest.approx(16 * rows * cols)
    assert posterior["measurements"]["Area"] == pytest.approx(9 * rows * cols)
    assert anterior["measurements"]["Volume"] == pytest.approx(result["volumesMm3"]["anterior"])
    assert total["measurements"]["Volume"] == pytest.approx(result["volumesMm3"]["total"])
    # the outline is closed and runs around the pixels: columns 4..8, rows 5..9 in corner coordinates
    points = anterior["points"]
    assert anterior["type"] == "POLYLINE" and (points[0] == points[-1]).all()
    assert points[:, 0].min() == 4 and points[:, 0].max() == 8 and points[:, 1].min() == 5 and points[:, 1].max() == 9


def test_seg_has_frames_and_references_only_where_something_was_found(series, tmp_path: Path) -> None:
    label = np.zeros_like(series.label_volume)
    label[3, 5:9, 4:8] = 1
    label[7, 10:12, 6:9] = 2
    label[8, 10:12, 6:9] = 2
    seg = build_seg(series.datasets, label, STRUCTURES, "unit-test-unet")
    assert dciodvfy_errors(seg, tmp_path) == []
    frames = sorted((int(f.SegmentIdentificationSequence[0].ReferencedSegmentNumber),
                     str(f.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID),
                     [float(v) for v in f.PlanePositionSequence[0].ImagePositionPatient])
                    for f in seg.PerFrameFunctionalGroupsSequence)
    source = series.datasets

    def on_slice(segment: int, k: int) -> tuple:
        return segment, str(source[k].SOPInstanceUID), [float(v) for v in source[k].ImagePositionPatient]

    assert frames == sorted([on_slice(1, 3), on_slice(2, 7), on_slice(2, 8)])
    referenced = {str(i.ReferencedSOPInstanceUID) for s in seg.ReferencedSeriesSequence
                  for i in s.ReferencedInstanceSequence}
    assert referenced == {str(source[k].SOPInstanceUID) for k in (3, 7, 8)}
    pixels = seg.pixel_array  # (frames, rows, cols), one frame per slice and segment
    assert int(pixels.sum()) == int((label > 0).sum())


def test_seg_leaves_out_slices_with_only_labels_beyond_the_structures(series) -> None:
    label = np.zeros_like(series.label_volume)
    label[2, 1:3, 1:3] = 3  # no structure 3: not in the SEG
    label[5, 1:3, 1:3] = 3
    label[5, 4, 4] = 1
    seg = build_seg(series.datasets, label, STRUCTURES, "unit-test-unet")
    frames = [str(f.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID)
              for f in seg.PerFrameFunctionalGroupsSequence]
    assert frames == [str(series.datasets[5].SOPInstanceUID)]
    assert int(seg.pixel_array.sum()) == 1


def test_seg_of_an_empty_result_is_one_empty_frame_per_segment(series, tmp_path: Path) -> None:
    seg = build_seg(series.datasets, np.zeros_like(series.label_volume), STRUCTURES, "u")
    assert int(seg.NumberOfFrames) == 2
    assert dciodvfy_errors(seg, tmp_path) == []


def test_sr_for_classification_passes_dciodvfy(tmp_path: Path) -> None:
    image = synthetic.chest_radiographs(1, seed=1, size=64)[0].dataset
    result = F.classification_findings(np.array([0.9, 0.2]), ["Cardiomegaly", "Pleural Effusion"])
    sr = build_sr([image], result, "classification2d", "unit-test-densenet")
    assert dciodvfy_errors(sr, tmp_path) == []
    assert "Cardiomegaly" in str(sr.ContentSequence)


@pytest.mark.slow
def test_occlusion_png_for_2d_and_3d_classifiers() -> None:
    import torch

    from dicomflow.inference.occlusion import occlusion_map, render_png
    from dicomflow.modeling import networks

    for task, size in (("classification2d", (32, 32)), ("classification3d", (32, 32, 32))):
        spec = networks.network_spec(task, ["a", "b"])
        net = networks.build_network(spec).eval()
        image, sens = occlusion_map(net, torch.rand(1, 1, *size), 1)
        assert image.shape == size[-2:] and sens.shape == size[-2:]
        assert render_png(image, sens).startswith(b"\x89PNG")


def _texts(items, meaning: str) -> set[str]:
    """TEXT values of every content item named ``meaning``, at any depth."""
    found = set()
    for item in items:
        name = item.ConceptNameCodeSequence[0].CodeMeaning if "ConceptNameCodeSequence" in item else ""
        if name == meaning and "TextValue" in item:
            found.add(str(item.TextValue))
        if "ContentSequence" in item:
            found |= _texts(item.ContentSequence, meaning)
    return found


def test_results_name_the_registered_model_and_its_version(series) -> None:
    result = F.segmentation_volumes(series.label_volume, series.spacing, ["anterior", "posterior"])
    seg = build_seg(series.datasets, series.label_volume, STRUCTURES, "hippocampus", model_version="3")
    sr = build_sr(series.datasets, result, "segmentation3d", "hippocampus", seg=seg, structures=STRUCTURES,
                  model_version="3")
    algo = seg.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0]
    assert (algo.AlgorithmName, algo.AlgorithmVersion) == ("hippocampus", "3")
    assert _texts(sr.ContentSequence, "Algorithm Name") == {"hippocampus"}
    assert _texts(sr.ContentSequence, "Algorithm Version") == {"3"}
    unregistered = build_sr(series.datasets, result, "segmentation3d", "hippocampus")
    (version,) = _texts(unregistered.ContentSequence, "Algorithm Version")
    assert version.startswith("unregistered (dicomflow ")
