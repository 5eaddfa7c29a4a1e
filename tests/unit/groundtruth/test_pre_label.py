"""Pre-label Lambda logic on GT's exact event shapes, against a file-backed DICOMweb client."""

from __future__ import annotations

import json
import random
from urllib.parse import parse_qs, urlsplit

import lambda_handlers
import pytest
from dicomweb_client import DICOMfileClient

from dicomflow.demo import synthetic
from dicomflow.dicom import geometry
from dicomflow.dicom.errors import PacsError
from dicomflow.dicom.orthanc import ResolvedObject, instance_id, series_id
from dicomflow.emulator.cloud.service import free_port
from dicomflow.groundtruth import pre_label, signing
from dicomflow.groundtruth.labels import CHEXPERT_CLASSES

KEY = "unit-test-signing-key-0123456789"
JOB_ARN = "arn:aws:sagemaker:us-east-1:123456789012:labeling-job/chest-job-1"
GATEWAY = "http://127.0.0.1:9999/wado"
NOW = 1_800_000_000


class IndexResolver:
    """Orthanc-ID -> UIDs from the IDs computed for known datasets (stands in for Orthanc's REST API)."""

    def __init__(self, datasets):
        self.index = {}
        for ds in datasets:
            uids = (ds.PatientID, ds.StudyInstanceUID, ds.SeriesInstanceUID)
            self.index[series_id(*uids)] = ResolvedObject("series", *uids[1:], None, ds.PatientID)
            self.index[instance_id(*uids, ds.SOPInstanceUID)] = ResolvedObject(
                "instance", *uids[1:], ds.SOPInstanceUID, ds.PatientID)

    def __call__(self, resource_id: str) -> ResolvedObject:
        if resource_id not in self.index:
            raise PacsError(f"no instance or series with Orthanc ID {resource_id}", "not-found")
        return self.index[resource_id]


@pytest.fixture(scope="module")
def pacs(tmp_path_factory):
    root = tmp_path_factory.mktemp("pacs")
    chest = synthetic.chest_radiographs(1, seed=3, size=64)[0].dataset
    series = synthetic.hippocampus_series(1, seed=3, shape=(8, 16, 12))[0].datasets
    nowin = synthetic.chest_radiographs(2, seed=4, size=48)[1].dataset
    del nowin.WindowCenter
    del nowin.WindowWidth
    shuffled = list(series)
    random.Random(1).shuffle(shuffled)
    for i, ds in enumerate([chest, nowin, *shuffled]):
        ds.save_as(root / f"{i}.dcm", enforce_file_format=True)
    client = DICOMfileClient(url=f"file://{root}", update_db=True, in_memory=True)
    return {"client": client, "chest": chest, "series": series, "nowin": nowin,
            "resolver": IndexResolver([chest, nowin, *series])}


@pytest.fixture
def settings():
    return pre_label.TaskSettings(gateway_url=GATEWAY, key=KEY.encode(), scope=signing.job_scope(JOB_ARN),
                                      labels=list(CHEXPERT_CLASSES), ttl=600)


def event(data_object: dict) -> dict:
    return {"version": "2018-10-16", "labelingJobArn": JOB_ARN, "dataObject": data_object}


def run(pacs, settings, data_object):
    return pre_label.pre_label(event(data_object), pacs["client"], pacs["resolver"], settings, now=NOW)


def check_url(url: str, study: str, series: str, sop: str) -> None:
    parts = urlsplit(url)
    assert f"{parts.scheme}://{parts.netloc}{parts.path}" == GATEWAY
    assert "contentType=application/dicom" in parts.query  # not %2F: Orthanc rejects that
    obj = signing.verify_wado_object(parts.query, KEY, now=NOW + 1, expected_scope="chest-job-1")
    assert (obj.study_uid, obj.series_uid, obj.sop_uid) == (study, series, sop)
    assert obj.expires == NOW + 600
    assert "orthanc" not in url.lower() and "password" not in url.lower()


def test_instance_by_orthanc_id(pacs, settings):
    ds = pacs["chest"]
    oid = instance_id(ds.PatientID, ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
    out = run(pacs, settings, {"source": oid})
    assert out["isHumanAnnotationRequired"] == "true"
    task = out["taskInput"]
    assert task["level"] == "instance" and task["objectId"] == oid
    assert task["studyInstanceUID"] == ds.StudyInstanceUID and task["sopInstanceUID"] == ds.SOPInstanceUID
    assert task["modality"] == ds.Modality
    assert task["labels"] == list(CHEXPERT_CLASSES)
    assert task["numberOfSlices"] == 1 and len(task["instances"]) == 1
    assert task["window"] == {"center": float(ds.WindowCenter), "width": float(ds.WindowWidth), "source": "dicom"}
    assert task["rows"] == ds.Rows and task["urlExpires"] == NOW + 600
    check_url(task["instances"][0]["url"], ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
    assert ds.PatientID not in json.dumps(task)  # no PHI reaches the browser


def test_series_ordered_along_normal(pacs, settings):
    series = pacs["series"]
    first = series[0]
    oid = series_id(first.PatientID, first.StudyInstanceUID, first.SeriesInstanceUID)
    task = run(pacs, settings, {"source-ref": oid})["taskInput"]
    assert task["level"] == "series" and task["sopInstanceUID"] is None
    assert task["numberOfSlices"] == len(series)
    normal = geometry.slice_normal(first.ImageOrientationPatient)
    expected = sorted(series, key=lambda d: geometry.slice_position(d.ImagePositionPatient, normal))
    assert [i["sopInstanceUID"] for i in task["instances"]] == [d.SOPInstanceUID for d in expected]
    positions = [i["position"] for i in task["instances"]]
    assert positions == sorted(positions) and len(set(positions)) == len(positions)
    for inst in task["instances"]:
        check_url(inst["url"], first.StudyInstanceUID, first.SeriesInstanceUID, inst["sopInstanceUID"])


@pytest.mark.parametrize("as_string", [False, True])
def test_uid_object_source(pacs, settings, as_string):
    ds = pacs["chest"]
    uids = {"StudyInstanceUID": ds.StudyInstanceUID, "SeriesInstanceUID": ds.SeriesInstanceUID,
            "SOPInstanceUID": ds.SOPInstanceUID}
    task = run(pacs, settings, {"source": json.dumps(uids) if as_string else uids})["taskInput"]
    assert task["objectId"] is None and task["sopInstanceUID"] == ds.SOPInstanceUID


def test_window_computed_from_pixels(pacs, settings):
    ds = pacs["nowin"]
    uids = {"StudyInstanceUID": ds.StudyInstanceUID, "SeriesInstanceUID": ds.SeriesInstanceUID,
            "SOPInstanceUID": ds.SOPInstanceUID}
    window = run(pacs, settings, {"source": uids})["taskInput"]["window"]
    assert window["source"] == "computed"
    pixels = ds.pixel_array
    lo, hi = int(pixels.min()), int(pixels.max())
    assert lo <= window["center"] <= hi and 0 < window["width"] <= hi - lo + 1


def test_window_fallbacks():
    meta = {"00280101": {"vr": "US", "Value": [12]}, "00280103": {"vr": "US", "Value": [0]}}
    assert pre_label.window_hint(meta) == {"center": 2047.5, "width": 4095.0, "source": "bits"}
    ct = {"00280101": {"vr": "US", "Value": [12]}, "00280103": {"vr": "US", "Value": [0]},
          "00281052": {"vr": "DS", "Value": [-1024]}, "00281053": {"vr": "DS", "Value": [1]},
          "00280106": {"vr": "US", "Value": [0]}, "00280107": {"vr": "US", "Value": [2048]}}
    assert pre_label.window_hint(ct) == {"center": 0.0, "width": 2048.0, "source": "pixel-range"}


def test_unknown_orthanc_id_is_not_found(pacs, settings):
    with pytest.raises(pre_label.LabelingTaskError, match="no instance or series") as err:
        run(pacs, settings, {"source": "00000000-11111111-22222222-33333333-44444444"})
    assert err.value.reason == "not-found"


@pytest.mark.parametrize("uids", [
    {"StudyInstanceUID": "1.2.3", "SeriesInstanceUID": "1.2.3.4", "SOPInstanceUID": "1.2.3.4.5"},
    {"StudyInstanceUID": "1.2.3", "SeriesInstanceUID": "1.2.3.4"},
])
def test_missing_object_is_not_found(pacs, settings, uids):
    with pytest.raises(pre_label.LabelingTaskError, match="not on the PACS") as err:
        run(pacs, settings, {"source": uids})
    assert err.value.reason == "not-found"


@pytest.mark.parametrize(("data_object", "message"), [
    ({}, "neither source nor source-ref"),
    ({"source": "s3://bucket/a.dcm"}, "S3 URI"),
    ({"source": "not-an-id"}, "neither an Orthanc ID"),
    ({"source": "{bad json"}, "does not parse"),
    ({"source": {"StudyInstanceUID": "1.2"}}, "needs StudyInstanceUID and SeriesInstanceUID"),
    ({"source": {"StudyInstanceUID": "1.2", "SeriesInstanceUID": "x.y"}}, "not a DICOM UID"),
])
def test_invalid_sources(pacs, settings, data_object, message):
    with pytest.raises(pre_label.LabelingTaskError, match=message) as err:
        run(pacs, settings, data_object)
    assert err.value.reason == "invalid"


# ---- the handler itself: configuration and an unreachable PACS ---------------------------------
def load_handler():
    return lambda_handlers.load_handler("pre_label")


@pytest.fixture
def handler_env(monkeypatch, tmp_path):
    for k in ("DICOMFLOW_PACS_SECRET_ARN", "DICOMFLOW_SIGNING_SECRET_ARN", "DICOMFLOW_LABELS"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("DICOMFLOW_HOME", str(tmp_path))
    monkeypatch.setenv("DICOMFLOW_PACS_URL", f"http://127.0.0.1:{free_port()}/dicom-web")
    monkeypatch.setenv("DICOMFLOW_PACS_USERNAME", "u")
    monkeypatch.setenv("DICOMFLOW_PACS_PASSWORD", "p")
    monkeypatch.setenv("DICOMFLOW_SIGNING_KEY", KEY)
    monkeypatch.setenv("DICOMFLOW_GATEWAY_URL", GATEWAY)
    return monkeypatch


def test_handler_unreachable_pacs(handler_env):
    handler = load_handler()
    with pytest.raises(pre_label.LabelingTaskError, match="unreachable") as err:
        handler.lambda_handler(event({"source": "00000000-11111111-22222222-33333333-44444444"}), None)
    assert err.value.reason == "unavailable"


def test_handler_needs_gateway(handler_env):
    handler_env.delenv("DICOMFLOW_GATEWAY_URL")
    with pytest.raises(pre_label.LabelingTaskError, match="DICOMFLOW_GATEWAY_URL"):
        load_handler().lambda_handler(event({"source": "x"}), None)


def test_handler_needs_key(handler_env):
    handler_env.delenv("DICOMFLOW_SIGNING_KEY")
    with pytest.raises(signing.SigningKeyError, match="DICOMFLOW_SIGNING_KEY"):
        load_handler().lambda_handler(event({"source": "x"}), None)


def test_labels_from_env(handler_env):
    handler_env.setenv("DICOMFLOW_LABELS", '["Nodule", "Mass"]')
    assert pre_label.TaskSettings.from_env(JOB_ARN).labels == ["Nodule", "Mass"]
    handler_env.setenv("DICOMFLOW_LABELS", "Nodule")
    with pytest.raises(Exception, match="DICOMFLOW_LABELS is not JSON"):
        pre_label.TaskSettings.from_env(JOB_ARN)


# ---- geometry ---------------------------------------------------------------------------------------
def test_slice_order_oblique_and_fallback():
    iop = [1, 0, 0, 0, 0.8, -0.6]  # oblique: normal = (0, 0.6, 0.8)
    positions = [[0, 3, 4], [0, 0, 0], [0, -3, -4]]
    assert geometry.slice_order(positions, [iop] * 3) == [2, 1, 0]
    assert geometry.slice_order([None, None], [None, None], [5, 2]) == [1, 0]
    with pytest.raises(geometry.GeometryError, match="different orientations"):
        geometry.slice_order([[0, 0, 0], [0, 0, 1]], [[1, 0, 0, 0, 1, 0], [1, 0, 0, 0, 0, 1]])
    with pytest.raises(geometry.GeometryError, match="parallel"):
        geometry.slice_normal([1, 0, 0, 1, 0, 0])


def test_query_string_is_hand_built():
    url = signing.sign_wado(GATEWAY, "1.2", "1.2.3", "1.2.3.4", scope="job", key=KEY, now=NOW)
    q = parse_qs(urlsplit(url).query)
    assert q["requestType"] == ["WADO"] and "application%2F" not in url
