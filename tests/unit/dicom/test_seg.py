"""A label volume written as a DICOM SEG reads back as the same voxels and structures (names and codes)."""

from __future__ import annotations

import numpy as np
import pytest
from model_helpers import as_retrieved

from dicomflow.demo import synthetic
from dicomflow.dicom.seg import build_seg, read_seg
from dicomflow.dicom.structures import StructureError, parse_structures


@pytest.fixture(scope="module")
def series() -> synthetic.SyntheticSeries:
    return synthetic.hippocampus_series(1, seed=8, shape=(12, 40, 40))[0]


@pytest.mark.parametrize("model", ["unit-test-unet", None])
def test_a_seg_round_trips_to_the_same_label_volume(series, model) -> None:
    structures = parse_structures(synthetic.HIPPOCAMPUS_STRUCTURES)
    seg = build_seg(series.datasets, series.label_volume, structures, model)
    assert {str(d.SegmentAlgorithmType) for d in seg.SegmentSequence} == {"AUTOMATIC" if model else "MANUAL"}
    sops = [str(ds.SOPInstanceUID) for ds in series.datasets]
    label, back = read_seg(as_retrieved([seg])[0], list(reversed(sops)))  # any slice order the caller has
    np.testing.assert_array_equal(label, series.label_volume[::-1])
    assert back == structures
    colours = [tuple(d.RecommendedDisplayCIELabValue) for d in seg.SegmentSequence]
    assert len(set(colours)) == len(structures)  # each structure its own overlay colour


def test_a_seg_of_another_series_is_refused(series) -> None:
    structures = parse_structures(["anterior", "posterior"])
    seg = build_seg(series.datasets, series.label_volume, structures, None)
    with pytest.raises(StructureError, match="references none"):
        read_seg(seg, ["1.2.3.4"])
