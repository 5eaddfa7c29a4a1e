"""``dicomflow search``: report files into the report index and back out; similar images from an index."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from click.testing import CliRunner

from dicomflow.cli.main import cli
from dicomflow.search.vectors import ImageVector, VectorIndex

UID = "1.2.826.0.1.3680043.8.498.{}"


def _run(home: Path, *argv: str):
    return CliRunner(env={"COLUMNS": "250"}).invoke(cli, ["--data-dir", str(home), "search", *argv])


def test_reports_are_indexed_searched_and_counted(tmp_path: Path) -> None:
    folder = tmp_path / "reports"
    folder.mkdir()
    texts = ["FINDINGS: No pleural effusion. IMPRESSION: Normal.", "FINDINGS: Large right pleural effusion.",
             "FINDINGS: Cardiomegaly [enlarged heart]."]
    for n, text in enumerate(texts):
        (folder / f"{n}.json").write_text(json.dumps({"StudyInstanceUID": UID.format(n), "AccessionNumber": f"A{n}",
                                                      "text": text}))
    (folder / "broken.json").write_text("{")
    added = _run(tmp_path, "add-reports", "--json")
    assert added.exit_code == 0, added.output
    summary = json.loads(added.output[added.output.index("{"):])
    assert summary["added"] == 3 and [f["file"] for f in summary["failed"]] == ["broken.json"]
    found = _run(tmp_path, "reports", "pleural effusion", "--code", "J90", "--status", "negative", "--json")
    page = json.loads(found.output)
    assert [r["studyInstanceUID"] for r in page["reports"]] == [UID.format(0)] and page["total"] == 1
    shown = _run(tmp_path, "reports", "cardiomegaly")
    assert shown.exit_code == 0 and "[cardiomegaly]" in shown.output.lower()  # the match marks are text, not markup
    assert "[enlarged heart]" in shown.output
    counted = json.loads(_run(tmp_path, "facets", "--json").output)["facets"]
    assert {"code": "J90", "reports": 1} in [{"code": f["code"], "reports": f["reports"]} for f in counted]
    bad = _run(tmp_path, "reports", "--code", "nonsense")
    assert bad.exit_code != 0 and "not an ICD-10-CM code" in str(bad.exception)


def test_similar_lists_the_nearest_other_studies(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    base = rng.standard_normal(8)
    with VectorIndex.open(tmp_path / "search" / "images", model={"name": "chest", "version": "2"},
                          dimensions=8) as ix:
        ix.add([ImageVector(UID.format(100 + i), UID.format(200 + i // 2), base + 0.1 * i * rng.standard_normal(8),
                            labels=("Edema",)) for i in range(10)])
    result = _run(tmp_path, "similar", "--study", UID.format(200), "-k", "3", "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    assert doc["model"] == {"name": "chest", "version": "2"} and doc["query"]["sopInstanceUID"] == UID.format(100)
    assert [n["rank"] for n in doc["neighbours"]] == [1, 2, 3]
    assert all(n["studyInstanceUID"] != UID.format(200) for n in doc["neighbours"])
    table = _run(tmp_path, "similar", "--image", UID.format(100), "-k", "2")
    neighbours = [line.split("│")[4].strip() for line in table.output.splitlines() if line.startswith("│")]
    assert table.exit_code == 0 and neighbours == [n["sopInstanceUID"] for n in json.loads(
        _run(tmp_path, "similar", "--image", UID.format(100), "-k", "2", "--json").output)["neighbours"]]
    missing = _run(tmp_path, "similar", "--study", UID.format(999))
    assert missing.exit_code != 0 and "has no image in the index" in str(missing.exception)


def test_similar_to_a_dicom_file_uses_its_indexed_vector_or_asks_for_the_endpoint(tmp_path: Path) -> None:
    from dicomflow.demo import synthetic

    chest = synthetic.chest_radiographs(2, seed=3, size=32)
    files = []
    for n, image in enumerate(chest):
        files.append(tmp_path / f"{n}.dcm")
        image.dataset.save_as(files[-1], enforce_file_format=True)
    rng = np.random.default_rng(2)
    with VectorIndex.open(tmp_path / "search" / "images", model={"name": "chest", "version": "2"},
                          dimensions=8) as ix:
        ix.add([ImageVector(str(chest[0].dataset.SOPInstanceUID), str(chest[0].dataset.StudyInstanceUID),
                            rng.standard_normal(8))]
               + [ImageVector(UID.format(300 + i), UID.format(400 + i), rng.standard_normal(8)) for i in range(4)])
    known = _run(tmp_path, "similar", "--image", str(files[0]), "-k", "3", "--json")
    assert known.exit_code == 0, known.output
    doc = json.loads(known.output)
    assert doc["query"]["sopInstanceUID"] == str(chest[0].dataset.SOPInstanceUID)
    assert len(doc["neighbours"]) == 3 and all(n["sopInstanceUID"] != doc["query"]["sopInstanceUID"]
                                               for n in doc["neighbours"])
    unknown = _run(tmp_path, "similar", "--image", str(files[1]))
    assert unknown.exit_code == 2 and "give --endpoint NAME" in unknown.output
    (tmp_path / "junk.dcm").write_bytes(b"\0" * 300)
    junk = _run(tmp_path, "similar", "--image", str(tmp_path / "junk.dcm"), "--endpoint", "x")
    assert junk.exit_code == 1 and "not a DICOM object" in str(junk.exception)


def test_the_same_patients_studies_come_from_the_pacs_by_patient_id(tmp_path: Path) -> None:
    from dicomweb_client import DICOMfileClient
    from pydicom.uid import generate_uid

    from dicomflow.demo import synthetic
    from dicomflow.dicom import dicomweb
    from dicomflow.search.images import same_patient_studies

    client = DICOMfileClient(url=f"file://{tmp_path}", in_memory=True)
    images = [im.dataset for im in synthetic.chest_radiographs(4, seed=4, size=32)]
    for ds, (patient, issuer) in zip(images, [("P1", "H"), ("P1", "H"), ("P1", "OTHER"), ("P2", "H")], strict=True):
        ds.PatientID, ds.IssuerOfPatientID, ds.StudyInstanceUID = patient, issuer, generate_uid()
    dicomweb.store(client, images)
    same = same_patient_studies(client, str(images[0].StudyInstanceUID))
    # this PACS returns no IssuerOfPatientID: every study of the PatientID is left out (more, never fewer)
    assert same == sorted(str(ds.StudyInstanceUID) for ds in images[:3])
