"""Inference benchmark: series retrieval vs the WADO-RS floor vs per-instance GETs; latency by stage.

Starts its own local cloud (Orthanc + emulated AWS) in a temp dir on free ports, seeds a 30- and a
200-slice synthetic MR series (256x256), then prints, per series:

* ``floor``     - Orthanc's bare WADO-RS series retrieval: one multipart GET, bytes only, no parsing;
* ``retrieve``  - ``dicomflow.dicomweb.retrieve_series`` (one multipart request, parsed to datasets);
* ``per-inst``  - sequential per-instance WADO-RS GETs (the AWS sample's way);
* end-to-end in-process latency of one request split by stage (untrained UNet, default preprocessing).

Run: ``.venv/bin/python bench/bench_inference.py [--repeats 5]``. Medians in milliseconds.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import requests


def _median_ms(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--sizes", default="30,200")
    args = parser.parse_args()

    from dicomflow.config import Settings
    from dicomflow.local.moto_server import client_environment
    from dicomflow.local.services import LocalCloud, free_port

    home = Path(tempfile.mkdtemp(prefix="dicomflow-bench-"))
    settings = Settings.load(data_dir=home, orthanc_http_port=free_port(), orthanc_dicom_port=free_port(),
                             aws_port=free_port())
    os.environ.update({**client_environment(settings), "DICOMFLOW_HOME": str(home)})
    cloud = LocalCloud(settings)
    cloud.up()
    try:
        from dicomflow import dicomweb, models, synthetic
        from dicomflow.credentials import pacs_connection
        from dicomflow.inference.request import parse_request
        from dicomflow.inference.service import InferenceService

        conn = pacs_connection()
        client = dicomweb.connect(conn)
        session = dicomweb.make_session(conn)
        spec = models.network_spec("segmentation3d", ["anterior", "posterior"])
        model_dir = models.save_artifact(home / "model", task="segmentation3d", labels=["anterior", "posterior"],
                                         network=models.build_network(spec), network_spec=spec,
                                         preprocess=models.default_preprocess("segmentation3d"), metrics={},
                                         manifest_sha256="0" * 64)
        service = InferenceService.from_model_dir(model_dir)
        print(f"{'series':>14} {'MB':>6} {'floor':>8} {'retrieve':>9} {'per-inst':>9} "
              f"{'ret/floor':>9} {'perinst/ret':>11}")
        stage_rows = []
        for n in (int(s) for s in args.sizes.split(",")):
            series = synthetic.hippocampus_series(1, seed=1000 + n, shape=(n, 256, 256))[0]
            dicomweb.store(client, series.datasets)
            study, uid = series.study_uid, series.series_uid
            sops = [str(ds.SOPInstanceUID) for ds in series.datasets]
            url = f"{conn.url}/studies/{study}/series/{uid}"
            accept = {"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'}
            size = len(session.get(url, headers=accept, timeout=120).content) / 1e6
            floor = _median_ms(lambda: session.get(url, headers=accept, timeout=120).content, args.repeats)  # noqa: B023
            ret = _median_ms(lambda: dicomweb.retrieve_series(client, study, uid), args.repeats)  # noqa: B023
            per = _median_ms(lambda: [dicomweb.retrieve_instance(client, study, uid, s) for s in sops],  # noqa: B023
                             max(1, args.repeats // 2))
            print(f"{n:>7} slices {size:>6.1f} {floor:>8.1f} {ret:>9.1f} {per:>9.1f} {ret / floor:>9.2f} "
                  f"{per / ret:>11.1f}")
            runs = [service.run(parse_request({"studyInstanceUID": study, "outputs": ["sr", "seg"],
                                               "storeToPacs": True}))["timingMs"] for _ in range(3)]
            stage_rows.append((n, {k: statistics.median(r.get(k, 0.0) for r in runs) for k in runs[0]}))
        print("\nend-to-end in-process latency by stage (median of 3, ms; SR+SEG stored):")
        keys = ["query", "retrieve", "preprocess", "model", "encode", "stow", "total"]
        print(f"{'series':>14} " + " ".join(f"{k:>10}" for k in keys) + f" {'non-model %':>11}")
        for n, row in stage_rows:
            share = 100 * (row["total"] - row["model"]) / row["total"]
            print(f"{n:>7} slices " + " ".join(f"{row.get(k, 0.0):>10.1f}" for k in keys) + f" {share:>11.1f}")
    except requests.RequestException as exc:
        raise SystemExit(f"benchmark failed talking to the local cloud: {exc}") from None
    finally:
        cloud.down()


if __name__ == "__main__":
    main()
