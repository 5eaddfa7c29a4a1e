"""The request pipeline against a file-backed DICOMweb client, and the serving process's HTTP contract."""

from __future__ import annotations

import copy
import io
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import requests
from dicomweb_client import DICOMfileClient
from model_helpers import untrained_artifact
from pydicom.uid import generate_uid

from dicomflow.demo import synthetic
from dicomflow.dicom import dicomweb
from dicomflow.dicom import json as dj
from dicomflow.emulator.cloud.service import free_port
from dicomflow.inference.errors import BadRequest, NoUsableSeries, StudyNotFound
from dicomflow.inference.request import parse_request
from dicomflow.inference.service import InferenceService
from dicomflow.modeling.embedding import weights_version

REPO = Path(__file__).resolve().parents[3]
SEG_LABELS = ["anterior", "posterior"]


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    return {"segmentation3d": untrained_artifact(root, "segmentation3d", SEG_LABELS, [16, 24, 16]),
            "classification2d": untrained_artifact(root, "classification2d", list(synthetic.CHEST_CLASSES), [32, 32])}


@pytest.fixture(scope="module")
def pacs(tmp_path_factory: pytest.TempPathFactory):
    client = DICOMfileClient(url=f"file://{tmp_path_factory.mktemp('pacs')}", in_memory=True)
    hippo = synthetic.hippocampus_series(1, seed=5, shape=(12, 24, 20))[0]
    chest = synthetic.chest_radiographs(1, seed=5, size=64)[0]
    dicomweb.store(client, hippo.datasets + [chest.dataset])
    return client, hippo, chest


@pytest.mark.slow
def test_segmentation_pipeline_stores_sr_and_seg(artifacts, pacs) -> None:
    client, hippo, _ = pacs
    svc = InferenceService.from_model_dir(artifacts["segmentation3d"])
    out = svc.run(parse_request({"studyInstanceUID": hippo.study_uid, "outputs": ["sr", "seg"]}), client=client)
    assert out["series"]["seriesInstanceUID"] == hippo.series_uid
    vols = out["findings"]["volumesMm3"]
    assert set(vols) == {"anterior", "posterior", "total"}
    assert vols["total"] == pytest.approx(vols["anterior"] + vols["posterior"], abs=0.01)
    assert out["volume"]["shape"] == [12, 24, 20]
    assert {"query", "retrieve", "preprocess", "model", "encode", "stow", "total"} <= set(out["timingMs"])
    modalities = sorted(dj.value(s, "Modality") for s in dicomweb.search_series(client, hippo.study_uid))
    assert modalities == ["MR", "SEG", "SR"]
    # a second request selects the MR again, never the SR/SEG it stored
    again = svc.run(parse_request({"studyInstanceUID": hippo.study_uid}), client=client)
    assert again["series"]["seriesInstanceUID"] == hippo.series_uid
    # only the model's modalities were searched: the stored SR/SEG series were never candidates
    assert again["series"]["searchedModalities"] == ["MR", "CT"]
    assert again["series"]["rejected"] == []


def test_classification_pipeline(artifacts, pacs) -> None:
    client, _, chest = pacs
    svc = InferenceService.from_model_dir(artifacts["classification2d"])
    study = str(chest.dataset.StudyInstanceUID)
    out = svc.run(parse_request({"studyInstanceUID": study, "outputs": ["sr"], "storeToPacs": False}), client=client)
    assert set(out["findings"]["probabilities"]) == set(synthetic.CHEST_CLASSES)
    assert out["outputs"]["sr"]["storedToPacs"] is False
    with pytest.raises(BadRequest, match="needs a segmentation model"):
        svc.run(parse_request({"studyInstanceUID": study, "outputs": ["seg"]}), client=client)
    with pytest.raises(BadRequest, match="outputS3Uri"):
        svc.run(parse_request({"studyInstanceUID": study, "outputs": ["occlusion"]}), client=client)


def test_the_embedding_output_is_the_pooled_features_normalised_deterministic_and_named(artifacts, pacs) -> None:
    client, hippo, chest = pacs
    svc = InferenceService.from_model_dir(artifacts["classification2d"])
    study = str(chest.dataset.StudyInstanceUID)
    ask = {"studyInstanceUID": study, "outputs": ["embedding"], "storeToPacs": False}
    first, second = svc.run(parse_request(ask), client=client), svc.run(parse_request(ask), client=client)
    emb = first["embedding"]
    vector = np.asarray(emb["vector"])
    assert emb["dimensions"] == vector.size == 1024
    assert np.linalg.norm(vector) == pytest.approx(1.0, abs=1e-5)
    assert second["embedding"]["vector"] == emb["vector"]  # the same image and weights, the same vector
    assert emb["sopInstanceUID"] == str(chest.dataset.SOPInstanceUID)
    assert (emb["viewPosition"], emb["bodyPart"]) == ("PA", "CHEST")  # what the k-NN filters use
    assert emb["thumbnail"] is None  # no output prefix: no thumbnail written
    assert emb["model"] == {"name": svc.name, "version": weights_version(svc.network)}
    assert emb["model"]["version"].startswith("weights-") and len(emb["model"]["version"]) == 20
    # the findings of the same pass equal those of a request without the embedding
    plain = svc.run(parse_request({**ask, "outputs": ["json"]}), client=client)
    assert plain["findings"]["probabilities"] == pytest.approx(first["findings"]["probabilities"], abs=1e-6)
    assert "embedding" not in plain
    # another image gives another vector: the features depend on the image
    other = synthetic.chest_radiographs(1, seed=6, size=64)[0]
    dicomweb.store(client, [other.dataset])
    third = svc.run(parse_request({**ask, "studyInstanceUID": str(other.dataset.StudyInstanceUID)}), client=client)
    assert float(np.dot(vector, third["embedding"]["vector"])) < 1 - 1e-4
    seg = InferenceService.from_model_dir(artifacts["segmentation3d"])
    with pytest.raises(BadRequest, match="output 'embedding' needs a whole-image classifier"):
        seg.run(parse_request({"studyInstanceUID": hippo.study_uid, "outputs": ["embedding"]}), client=client)


def _part10(ds) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def test_an_image_sent_as_the_body_is_analysed_like_the_same_image_in_the_pacs(artifacts, pacs) -> None:
    client, hippo, chest = pacs
    svc = InferenceService.from_model_dir(artifacts["classification2d"])
    study = str(chest.dataset.StudyInstanceUID)
    from_pacs = svc.run(parse_request({"studyInstanceUID": study, "outputs": ["embedding"], "storeToPacs": False}),
                        client=client)
    sent = parse_request(_part10(chest.dataset), "application/dicom")
    assert (sent.study_uid, sent.outputs, sent.store_to_pacs) == (study, ("json", "embedding"), False)
    direct = svc.run(sent)  # no PACS client: nothing is fetched or stored
    assert direct["embedding"]["vector"] == pytest.approx(from_pacs["embedding"]["vector"], abs=1e-6)
    assert direct["embedding"]["sopInstanceUID"] == str(chest.dataset.SOPInstanceUID)
    assert direct["findings"]["probabilities"] == pytest.approx(from_pacs["findings"]["probabilities"], abs=1e-6)
    assert direct["series"]["reason"] == "the image sent in the request body"
    assert direct["outputs"] == {}
    with pytest.raises(BadRequest, match="not a DICOM object.*as application/dicom"):
        parse_request(b"\0" * 200, "application/dicom")
    with pytest.raises(BadRequest, match="empty request body"):
        parse_request(b"", "application/dicom")
    with pytest.raises(BadRequest, match="or one DICOM image as application/dicom"):
        parse_request(b"{}", "image/png")
    seg = InferenceService.from_model_dir(artifacts["segmentation3d"])
    with pytest.raises(BadRequest, match="for a 2D classifier"):
        seg.run(parse_request(_part10(hippo.datasets[0]), "application/dicom"))


def _variant(ds, stored, **header):
    out = copy.deepcopy(ds)
    out.PixelData = stored.astype(np.uint16).tobytes()
    out.StudyInstanceUID, out.SeriesInstanceUID, out.SOPInstanceUID = generate_uid(), generate_uid(), generate_uid()
    for key, value in header.items():
        setattr(out, key, value)
    return out


def test_monochrome1_and_rescaled_encodings_embed_like_the_plain_image(artifacts, pacs) -> None:
    client, _, chest = pacs
    svc = InferenceService.from_model_dir(artifacts["classification2d"])
    ds, bits = chest.dataset, int(chest.dataset.BitsStored)
    stored = ds.pixel_array.astype(np.int64)
    even = _variant(ds, (stored // 2) * 2)
    variants = {"plain": even,
                "monochrome1": _variant(ds, (2**bits - 1) - (stored // 2) * 2, PhotometricInterpretation="MONOCHROME1"),
                "rescaled": _variant(ds, stored // 2, RescaleSlope=2, RescaleIntercept=0)}
    dicomweb.store(client, list(variants.values()))
    vectors = {name: np.asarray(svc.run(parse_request({"studyInstanceUID": str(v.StudyInstanceUID),
                                                        "outputs": ["embedding"], "storeToPacs": False}),
                                        client=client)["embedding"]["vector"]) for name, v in variants.items()}
    for name in ("monochrome1", "rescaled"):
        np.testing.assert_allclose(vectors[name], vectors["plain"], atol=1e-5, err_msg=name)


def test_unknown_study_and_unusable_study(artifacts, pacs) -> None:
    client, hippo, _ = pacs
    svc = InferenceService.from_model_dir(artifacts["classification2d"])
    with pytest.raises(StudyNotFound):
        svc.run(parse_request({"studyInstanceUID": "1.2.3.4.5.6"}), client=client)
    with pytest.raises(NoUsableSeries, match="modality MR does not fit"):
        svc.run(parse_request({"studyInstanceUID": hippo.study_uid}), client=client)


@pytest.mark.slow
def test_serving_process_contract(artifacts, tmp_path: Path) -> None:
    """ping, 400/413/404 answers, concurrent pings, SIGTERM -> exit 0 (no PACS needed for these)."""
    port = free_port()
    env = {**os.environ, "SAGEMAKER_BIND_TO_PORT": str(port), "SM_MODEL_DIR": str(artifacts["classification2d"]),
           "DICOMFLOW_PACS_URL": f"http://127.0.0.1:{free_port()}/dicom-web", "DICOMFLOW_PACS_USERNAME": "u",
           "DICOMFLOW_PACS_PASSWORD": "p", "DICOMFLOW_HOME": str(tmp_path), "DICOMFLOW_PACS_RETRY_SECONDS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "inference_container.serve"], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            try:
                if requests.get(f"{url}/ping", timeout=1).status_code == 200:
                    break
            except (requests.ConnectionError, requests.Timeout):  # not listening yet, or a busy machine
                pass
            assert proc.poll() is None, proc.stdout.read().decode()
            time.sleep(0.1)
        else:
            pytest.fail("serving process never became healthy")
        with ThreadPoolExecutor(8) as pool:  # pings answered side by side, while a slow request runs too
            slow = pool.submit(requests.post, f"{url}/invocations", json={"studyInstanceUID": "1.2.3"}, timeout=60)
            pings = list(pool.map(lambda _: requests.get(f"{url}/ping", timeout=10).status_code, range(24)))
            assert pings == [200] * 24 and slow.result().status_code == 503
        bad = requests.post(f"{url}/invocations", data=b"{oops", headers={"Content-Type": "application/json"},
                            timeout=30)
        assert bad.status_code == 400 and "not valid JSON" in bad.json()["message"]
        big = requests.post(f"{url}/invocations", data=b"x" * 200_000, headers={"Content-Type": "application/json"},
                            timeout=30)
        assert big.status_code == 413
        down = requests.post(f"{url}/invocations", json={"studyInstanceUID": "1.2.3"}, timeout=60)
        assert down.status_code == 503 and "unreachable" in down.json()["message"]
        assert requests.get(f"{url}/nope", timeout=10).status_code == 404
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    log = proc.stdout.read().decode()
    assert "model loaded" in log and "password" not in log.lower()


@pytest.mark.slow
def test_contours_output_outlines_the_segmentation_slice_by_slice(artifacts, pacs) -> None:
    from dicomflow.groundtruth.masks import worker_volume

    client, hippo, chest = pacs
    svc = InferenceService.from_model_dir(artifacts["segmentation3d"])
    out = svc.run(parse_request({"studyInstanceUID": hippo.study_uid, "outputs": ["contours"], "storeToPacs": False}),
                  client=client)
    order = [str(ds.SOPInstanceUID) for ds in sorted(hippo.datasets, key=lambda d: float(d.ImagePositionPatient[2]))]
    rois = [{"type": "freehand", **c} for c in out["contours"]]
    assert {c["sopInstanceUID"] for c in out["contours"]} <= set(order)
    back = worker_volume(rois, order, tuple(out["volume"]["shape"]), ["anterior", "posterior"])
    voxels = out["findings"]["voxels"]
    assert sum(voxels.values()) > 100 and out["contours"], voxels  # the (untrained) model does find something
    for value, name in ((1, "anterior"), (2, "posterior")):  # the outlines hold the voxels the volumes count
        assert abs(int((back == value).sum()) - voxels[name]) <= 0.01 * max(voxels[name], 100), (name, voxels)
    cls = InferenceService.from_model_dir(artifacts["classification2d"])
    with pytest.raises(BadRequest, match="'contours' needs a segmentation model"):
        cls.run(parse_request({"studyInstanceUID": str(chest.dataset.StudyInstanceUID), "outputs": ["contours"]}),
                client=client)
