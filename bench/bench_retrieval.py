"""Series retrieval from Orthanc: our ``retrieve_series`` vs the bare WADO-RS GET vs per-instance GETs.

Starts its own Orthanc on free ports in a temporary data dir, stores a 30-slice 512x512 and a
200-slice 256x256 synthetic MR series, then times (median of ``--repeats`` after one warm-up):

* ``floor``: one WADO-RS series GET with requests, body read into memory, nothing parsed;
* ``ours``: :func:`dicomflow.dicom.dicomweb.retrieve_series` (one multipart request, parsed to datasets);
* ``per-instance``: QIDO for the instances, then one WADO-RS GET per instance, sequentially and
  parsed (what the AWS sample does).

Usage: ``.venv/bin/python bench/bench_retrieval.py [--repeats 7]``
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import requests

from dicomflow.config import Settings
from dicomflow.credentials import PacsConnection
from dicomflow.demo import synthetic
from dicomflow.dicom import dicomweb
from dicomflow.dicom import json as dj
from dicomflow.emulator.cloud.cloud import LocalCloud
from dicomflow.emulator.cloud.orthanc import OrthancService
from dicomflow.emulator.cloud.service import free_port

SERIES = ((30, 512), (200, 256))  # (slices, rows = columns)
ACCEPT_SERIES = 'multipart/related; type="application/dicom"; transfer-syntax=*'


def make_series(slices: int, size: int, seed: int) -> list:
    """A geometrically valid MR series of ``slices`` x ``size``^2 with random 12-bit pixels."""
    series = synthetic.hippocampus_series(1, seed=seed, shape=(slices, 16, 16))[0]
    rng = np.random.default_rng(seed)
    for ds in series.datasets:
        ds.Rows = ds.Columns = size
        ds.PixelData = rng.integers(0, 4096, (size, size), dtype=np.uint16).tobytes()
    return series.datasets


def median_ms(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm-up (connections, caches)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="dicomflow-bench-") as tmp:
        settings = Settings.load(data_dir=Path(tmp), orthanc_http_port=free_port(), orthanc_dicom_port=free_port())
        orthanc = OrthancService(settings)
        cloud = LocalCloud(settings, [orthanc])
        cloud.up()
        try:
            user, password = orthanc.credentials()
            conn = PacsConnection(settings.dicomweb_url, user, password)
            client = dicomweb.connect(conn)
            bare = requests.Session()
            bare.auth = conn.auth
            bare.headers["Accept-Encoding"] = "identity"
            rows = []
            for k, (slices, size) in enumerate(SERIES):
                datasets = make_series(slices, size, seed=k)
                t0 = time.perf_counter()
                dicomweb.store(client, datasets)
                stow_s = time.perf_counter() - t0
                study, series = datasets[0].StudyInstanceUID, datasets[0].SeriesInstanceUID
                url = f"{conn.url}/studies/{study}/series/{series}"
                mb = len(bare.get(url, headers={"Accept": ACCEPT_SERIES}, timeout=60).content) / 1e6

                def floor(url: str = url) -> bytes:
                    r = bare.get(url, headers={"Accept": ACCEPT_SERIES}, timeout=60)
                    r.raise_for_status()
                    return r.content

                def ours(study: str = study, series: str = series, n: int = slices) -> list:
                    got = dicomweb.retrieve_series(client, study, series)
                    assert len(got) == n
                    return got

                def per_instance(study: str = study, series: str = series, n: int = slices) -> list:
                    found = dicomweb.search_instances(client, study, series)
                    got = [dicomweb.retrieve_instance(client, study, series, dj.value(i, "SOPInstanceUID"))
                           for i in found]
                    assert len(got) == n
                    return got

                times = {name: median_ms(fn, args.repeats)
                         for name, fn in (("floor", floor), ("ours", ours), ("per-instance", per_instance))}
                rows.append((f"{slices}x{size}x{size}", mb, slices / stow_s, times))
        finally:
            cloud.down()

    head = f"{'series':>14} {'MB':>6} {'STOW inst/s':>11} {'floor ms':>9} {'ours ms':>8} {'per-inst ms':>11} " \
           f"{'ours/floor':>10} {'per-inst/ours':>13}"
    print(head)
    print("-" * len(head))
    for name, mb, stow, t in rows:
        print(f"{name:>14} {mb:6.1f} {stow:11.0f} {t['floor']:9.1f} {t['ours']:8.1f} {t['per-instance']:11.1f} "
              f"{t['ours'] / t['floor']:10.2f} {t['per-instance'] / t['ours']:13.2f}")


if __name__ == "__main__":
    main()
