"""The clinician's report: its words come from the findings (volumes, the model's own error, the series and why),
it warns when the input is unlike the training data, and it is a PDF that becomes a valid Encapsulated PDF."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from model_helpers import dciodvfy_errors

from dicomflow.demo import synthetic
from dicomflow.dicom.pdf import encapsulated_pdf, pdf_bytes
from dicomflow.dicom.structures import parse_structures
from dicomflow.inference import findings as F
from dicomflow.inference.report import NOT_A_DIAGNOSIS, clinician_report, report_text

STRUCTURES = parse_structures(synthetic.HIPPOCAMPUS_STRUCTURES)
SELECTION = {"seriesInstanceUID": "1.2.3", "modality": "MR", "instances": 12,
             "reason": "the only MR series with 3D geometry"}


@pytest.fixture(scope="module")
def series() -> synthetic.SyntheticSeries:
    return synthetic.hippocampus_series(1, seed=4, shape=(12, 32, 32))[0]


def _findings(series, out_of_distribution: bool = False) -> dict:
    result = F.segmentation_volumes(series.label_volume, series.spacing, ["anterior", "posterior"])
    result["quality"] = {"outOfDistribution": out_of_distribution,
                         "reasons": ["intensity mean 9000 outside the training range 800-1200"] * out_of_distribution,
                         "expected": {"split": "test", "structures": {
                             "anterior": {"dice": 0.91, "meanAbsVolumeErrorPct": 3.2},
                             "posterior": {"dice": 0.88, "meanAbsVolumeErrorPct": 4.5}}}}
    return result


def test_the_words_are_the_findings_the_models_error_and_the_series(series) -> None:
    result = _findings(series)
    text = report_text(series.datasets, result, "segmentation3d", "hippo-unet", "7", SELECTION,
                       normative={"total": [500, 1200]})
    rows = {r[0]: r for r in text.rows}
    assert set(rows) == {"anterior", "posterior", "total"}
    for name, mm3 in result["volumesMm3"].items():
        assert rows[name][1] == f"{mm3:,.0f}"
    assert rows["anterior"][2:4] == ["0.91", "±3.2 %"] and "test" in text.table_header[2]
    assert rows["anterior"][4] == "none configured" and rows["total"][4].startswith("500-1200 (")
    words = " ".join(text.header)
    assert "hippo-unet, version 7" in words and SELECTION["reason"] in words and series.patient_id in words
    assert not text.warning and text.disclaimer == NOT_A_DIAGNOSIS


def test_an_input_unlike_the_training_data_is_a_warning(series) -> None:
    text = report_text(series.datasets, _findings(series, True), "segmentation3d", "hippo-unet", None, SELECTION)
    assert text.warning and text.quality.startswith("WARNING") and "outside the training range" in text.quality


def test_a_chest_report_lists_each_probability_against_the_threshold() -> None:
    image = synthetic.chest_radiographs(1, seed=1, size=64)[0].dataset
    result = F.classification_findings(np.array([0.9, 0.2]), ["Cardiomegaly", "Pleural Effusion"])
    text = report_text([image], result, "classification2d", "chest", "2", SELECTION)
    assert [r[0] for r in text.rows] == ["Cardiomegaly", "Pleural Effusion"]
    assert [r[2] for r in text.rows] == ["present", "absent"]
    assert clinician_report([image], result, "classification2d", "chest", "2", SELECTION).startswith(b"%PDF-")


def test_the_report_is_a_pdf_in_a_valid_encapsulated_pdf_of_the_study(series, tmp_path: Path) -> None:
    pdf = clinician_report(series.datasets, _findings(series), "segmentation3d", "hippo-unet", "7", SELECTION,
                           series.label_volume, STRUCTURES)
    assert pdf.startswith(b"%PDF-") and pdf.rstrip().endswith(b"%%EOF")
    ds = encapsulated_pdf(pdf, series.datasets[0], "AI volumetry report")
    assert ds.StudyInstanceUID == series.study_uid and ds.PatientID == series.patient_id
    assert ds.Modality == "DOC" and ds.MIMETypeOfEncapsulatedDocument == "application/pdf"
    assert pdf_bytes(ds) == pdf and len(ds.EncapsulatedDocument) % 2 == 0
    assert dciodvfy_errors(ds, tmp_path) == []
    with pytest.raises(ValueError, match="not a PDF"):
        encapsulated_pdf(b"<html>", series.datasets[0], "x")
