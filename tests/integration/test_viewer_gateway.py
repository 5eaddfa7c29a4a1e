"""The viewer gateway of the local cloud over real Orthanc: nothing without a session, a sign-in link works once,
DICOMweb reads pass with the PACS's URLs rewritten to the gateway, anything that writes or leaves the read-only
set is refused (and the PACS is unchanged), and no answer carries the PACS credential."""

from __future__ import annotations

import base64

import pydicom
import pytest
import requests
from pydicom.data import get_testdata_file

from dicomflow.config import read_secret_file
from dicomflow.credentials import local_orthanc_secret_path
from dicomflow.dicom import dicomweb
from dicomflow.emulator.viewer import access
from dicomflow.emulator.viewer.access import sign_in_link

pytestmark = pytest.mark.integration
FRAMES = 'multipart/related; type="application/octet-stream"; transfer-syntax=*'


@pytest.fixture(scope="module")
def viewer(local_cloud, study_with_seg):
    s = local_cloud.settings
    session = requests.Session()
    signed = session.get(sign_in_link(s, "gateway-test", study_with_seg.study_uid), allow_redirects=False, timeout=30)
    assert signed.status_code == 303, signed.text
    creds = read_secret_file(local_orthanc_secret_path(s.data_dir))
    return f"http://{s.host}:{s.viewer_port}", session, signed, creds


def _secrets(creds: dict) -> list[str]:
    return [creds["password"], base64.b64encode(f"{creds['username']}:{creds['password']}".encode()).decode()]


def _no_secret(resp: requests.Response, creds: dict) -> None:
    text = resp.content.decode("latin-1") + " ".join(f"{k}: {v}" for k, v in resp.headers.items())
    assert not any(secret in text for secret in _secrets(creds)), resp.url


@pytest.mark.parametrize("path", ["/", "/viewer?StudyInstanceUIDs=1.2.3", "/app-config.js", "/dicom-web/studies",
                                  "/app.bundle.css"])
def test_nothing_but_sign_in_answers_without_a_session(local_cloud, path: str) -> None:
    s = local_cloud.settings
    resp = requests.get(f"http://{s.host}:{s.viewer_port}{path}", timeout=30)
    assert resp.status_code == 401
    forged = requests.get(f"http://{s.host}:{s.viewer_port}{path}", timeout=30,
                          cookies={access.COOKIE: access.session_token(b"not the viewer key" * 2, "mallory")})
    assert forged.status_code == 401


def test_a_sign_in_link_works_once_and_sets_a_strict_http_only_cookie(viewer, local_cloud, study_with_seg) -> None:
    base, _session, signed, _creds = viewer
    assert signed.headers["location"] == f"/viewer?StudyInstanceUIDs={study_with_seg.study_uid}"
    cookie = signed.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/" in cookie
    link = sign_in_link(local_cloud.settings, "gateway-test")
    assert requests.get(link, allow_redirects=False, timeout=30).status_code == 303
    again = requests.get(link, allow_redirects=False, timeout=30)
    assert again.status_code == 403 and "used already" in again.text
    # followed again by the browser it signed in (a page's link clicked twice): it just opens its study
    base, session = viewer[0], viewer[1]
    study_link = sign_in_link(local_cloud.settings, "gateway-test", study_with_seg.study_uid)
    assert requests.get(study_link, allow_redirects=False, timeout=30).status_code == 303  # someone else used it
    reopened = session.get(study_link, allow_redirects=False, timeout=30)
    assert reopened.status_code == 303 and reopened.headers["location"].endswith(study_with_seg.study_uid)
    assert "set-cookie" not in reopened.headers
    assert requests.get(f"{base}/signin?ticket=forged", timeout=30).status_code == 403


def test_reads_pass_with_the_pacs_urls_pointing_at_the_gateway(viewer, study_with_seg) -> None:
    base, session, _signed, creds = viewer
    page = session.get(f"{base}/viewer?StudyInstanceUIDs={study_with_seg.study_uid}", timeout=30)
    assert page.status_code == 200 and "app-config.js" in page.text
    assert "content-security-policy" in page.headers and "connect-src 'self'" in page.headers["content-security-policy"]
    config = session.get(f"{base}/app-config.js", timeout=30)
    assert config.status_code == 200 and "/dicom-web" in config.text
    study = study_with_seg.study_uid
    qido = session.get(f"{base}/dicom-web/studies", params={"StudyInstanceUID": study}, timeout=30)
    assert qido.status_code == 200 and study in qido.text
    series = session.get(f"{base}/dicom-web/studies/{study}/series", timeout=30).json()
    assert {"MR", "SEG"} <= {s["00080060"]["Value"][0] for s in series}
    mr = next(s for s in series if s["00080060"]["Value"][0] == "MR")["0020000E"]["Value"][0]
    meta = session.get(f"{base}/dicom-web/studies/{study}/series/{mr}/metadata", timeout=60)
    assert meta.status_code == 200 and len(meta.json()) == len(study_with_seg.datasets)
    uris = [v for item in meta.json() for tag in item.values() for v in [tag.get("BulkDataURI")] if v]
    assert uris and all(u.startswith(f"{base}/dicom-web/") for u in uris), uris[:2]
    sop = meta.json()[0]["00080018"]["Value"][0]
    frame = session.get(f"{base}/dicom-web/studies/{study}/series/{mr}/instances/{sop}/frames/1",
                        headers={"Accept": FRAMES}, timeout=60)
    ds = study_with_seg.datasets[0]
    assert frame.status_code == 200 and len(frame.content) >= ds.Rows * ds.Columns * 2
    for resp in (page, config, qido, meta, frame):
        _no_secret(resp, creds)
    missing = session.get(f"{base}/dicom-web/studies/1.2.3.4.5/series", timeout=30)
    assert missing.status_code in (200, 204, 404) and missing.status_code < 500


def test_writes_and_paths_outside_the_read_only_set_are_refused(viewer, local_cloud) -> None:
    base, session, _signed, creds = viewer
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    client = dicomweb.connect(local_cloud.pacs)
    before = len(dicomweb.search_studies(client))
    body = dicomweb.dataset_bytes(ds)
    stow = session.post(f"{base}/dicom-web/studies", data=body, timeout=30,
                        headers={"Content-Type": 'multipart/related; type="application/dicom"; boundary=x'})
    assert stow.status_code == 405 and stow.headers.get("allow") == "GET, HEAD"
    some_study = dicomweb.search_studies(client)[0]["0020000D"]["Value"][0]
    for method in ("DELETE", "PUT", "PATCH"):
        assert session.request(method, f"{base}/dicom-web/studies/{some_study}", timeout=30).status_code == 405
    for path in ("/dicom-web/servers", "/dicom-web/info", f"/dicom-web/studies/{some_study}/reject",
                 "/dicom-web/studies/..%2F..%2Ftools%2Freset", "/dicom-web/"):
        refused = session.get(f"{base}{path}", timeout=30)
        assert refused.status_code == 403, (path, refused.status_code)
        _no_secret(refused, creds)
    assert session.post(f"{base}/tools/reset", timeout=30).status_code == 405
    assert len(dicomweb.search_studies(client)) == before
    assert session.get(f"{base}/signout", timeout=30).status_code == 200
    assert session.get(f"{base}/dicom-web/studies", timeout=30).status_code == 401
