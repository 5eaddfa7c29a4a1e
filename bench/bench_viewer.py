"""The OHIF viewer: from opening a study's link to its first image drawn and to its SEG overlay drawn, against
the bytes the viewer must fetch.

A private local cloud (Orthanc, the viewer gateway); one 200-slice 256x256 synthetic MR series (uncompressed,
16-bit, as ``bench_retrieval``) with its label volume stored as a DICOM SEG in the study. Per repeat, seconds,
median (min-max):

* ``floor: Orthanc WADO-RS``: the whole series retrieved from Orthanc directly, its multipart answer read from
  the socket into one preallocated buffer (``bench_retrieval``'s raw read): the bytes any viewer needs;
* ``gateway WADO-RS``: the same request through the viewer gateway (sign-in cookie, read-only check, PACS
  credentials added, the answer streamed back): what the gateway adds to each byte;
* ``viewer: first DICOMweb request``: a fresh headless Chromium (Debian's) opens the sign-in link; until the page
  sends its first DICOMweb request (the browser's resource timing): OHIF loading and starting, no study bytes;
* ``viewer: first image``: the same page, until the viewport's canvas shows the image (OHIF fetches the study's
  metadata, then the frames it draws first; the requests and bytes it had by then are printed);
* ``viewer: SEG overlay``: from the same link, until the SEG's colours are on the canvas: the first image, then
  a double click on the SEG in the study browser, the SEG fetched and decoded, the overlay drawn.

Headless Chromium renders without a GPU here (``--disable-gpu``): a workstation draws faster, the fetches
are the same. Run: ``.venv/bin/python bench/bench_viewer.py [--repeats 5] [--json]``.
"""

from __future__ import annotations

import argparse
import json
import time

import requests
from _cloud import private_cloud
from _stats import Sample, check_repeats, table
from bench_retrieval import RawReader

from dicomflow.credentials import PacsConnection
from dicomflow.demo import seed as seeding
from dicomflow.demo.viewer_page import look_at_study
from dicomflow.dicom import dicomweb
from dicomflow.emulator.viewer.access import sign_in_link

SHAPE = (200, 256, 256)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    repeats = check_repeats(args.repeats)
    with private_cloud("dicomflow-bench-viewer-") as local:
        s = local.settings
        user, password = local.service("orthanc").credentials()
        conn = PacsConnection(s.dicomweb_url, user, password)
        [study] = seeding.plan(chest=0, hippocampus=1, seed=5, real=False, hippocampus_shape=SHAPE)
        client = dicomweb.connect(conn)
        seeding.seed(client, s.data_dir, [study])
        seeding.store_label_segs(client, [study])
        series_path = f"studies/{study.study_uid}/series/{study.entry['SeriesInstanceUID']}"
        direct = requests.Session()
        direct.auth, direct.headers["Accept-Encoding"] = conn.auth, "identity"
        floor = RawReader(direct, f"{conn.url}/{series_path}")
        through = requests.Session()
        through.headers["Accept-Encoding"] = "identity"
        through.get(sign_in_link(s, "bench"), timeout=30).raise_for_status()
        gateway = RawReader(through, f"http://{s.host}:{s.viewer_port}/dicom-web/{series_path}")
        times: dict[str, list[float]] = {k: [] for k in ("floor", "gateway", "boot", "first", "overlay")}
        fetched: list[tuple[int, int]] = []
        floor(), gateway()  # warm-up: Orthanc's caches, connections
        look_at_study(sign_in_link(s, "bench", study.study_uid))  # warm-up: the browser's first start
        for _ in range(repeats):
            for name, reader in (("floor", floor), ("gateway", gateway)):
                t0 = time.perf_counter()
                reader()
                times[name].append(time.perf_counter() - t0)
            look = look_at_study(sign_in_link(s, "bench", study.study_uid))
            times["first"].append(look.first_image_s)
            times["boot"].append(look.first_request_s or float("nan"))
            fetched.append((look.requests_by_first_image, look.bytes_by_first_image))
            times["overlay"].append(look.overlay_s or float("nan"))
        size_mb = len(floor.buffer) / 1e6
    samples = {k: Sample(tuple(v)) for k, v in times.items()}
    if args.json:
        print(json.dumps({"series": list(SHAPE), "megabytes": round(size_mb, 1), "fetchedByFirstImage": fetched,
                          "seconds": {k: v.as_dict(3) for k, v in samples.items()}}))
        return
    names = {"floor": "floor: Orthanc WADO-RS (raw read)", "gateway": "gateway WADO-RS (raw read)",
             "boot": "viewer: link to its first DICOMweb request", "first": "viewer: link to first image drawn",
             "overlay": "viewer: link to SEG overlay drawn"}
    base = samples["floor"].median
    rows = [[names[k], v.text(3), f"{v.median / base:.1f}"] for k, v in samples.items()]
    print(f"{SHAPE[0]}-slice {SHAPE[1]}x{SHAPE[2]} MR series, {size_mb:.1f} MB of WADO-RS; {repeats} repeats")
    print(table(["way", "seconds, median (min-max)", "x floor"], rows))
    requests_n, sizes = sorted(n for n, _ in fetched), sorted(b for _, b in fetched)
    print(f"by the first image the page had made {requests_n[len(requests_n) // 2]} DICOMweb requests for "
          f"{sizes[len(sizes) // 2] / 1e6:.1f} MB (medians)")


if __name__ == "__main__":
    main()
