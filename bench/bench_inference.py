"""Inference benchmark: latency by stage of the async endpoint, and its retrieval against the raw transfer.

Starts its own local cloud (Orthanc + emulated AWS) in a temp dir on free ports, seeds a 30- and a
200-slice synthetic MR series (256x256), then prints, per series, in milliseconds, median (min-max)
over ``--repeats``:

* ``raw read``  - the floor: the series' multipart WADO-RS answer read from the socket into one
  preallocated buffer (``bench_retrieval.RawReader``), nothing parsed;
* ``retrieve``  - ``dicomflow.dicom.dicomweb.retrieve_series`` (one request, parsed to datasets);
  (``bench_retrieval.py`` compares it with the decode floor and the dicomweb-client, MONAI Label and
  per-instance ways);
* end-to-end async latency through the emulated endpoint (invoke -> result in S3OutputPath) split
  into queue (invoke to start of processing), query, retrieve, preprocess, model (the network's
  passes), postprocess (label map on the original grid, volumes), encode (SR+SEG), stow and the
  rest (S3 output, notification), and the share of each request that is not the model.

The model is the training job's segmentation3d UNet, trained here (about 5 minutes) on 16 synthetic
series of the served sizes (256 mm field of view), as a whole-head service would run it: every
series resampled to 1 mm voxels (``--spacing``), z-score intensities (``--intensity``), random
64x64x64 patches in training and a sliding window of them at inference (``--spatial-size``). The
benchmark prints the predicted and true hippocampus volume and the SEG frame count of each served
series, so a broken model shows. ``--whole-series`` resizes the whole series to ``--spatial-size``
instead (one quick pass, but 256 mm in 64 voxels is 4 mm in-plane: its volumes are off by tens of
percent); ``--untrained`` serves an untrained UNet on the default 32x48x40 whole-series input (dense
masks: the worst case for the SEG).

Run: ``.venv/bin/python bench/bench_inference.py [--repeats 5] [--sizes 30,200] [--whole-series]``.
The end of a request is its SNS success notification, read from an SQS queue with long polls (no
CPU spent waiting); ``rest`` is the S3 output and the notification.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import requests
from _cloud import Notifications, private_cloud, serve_model
from _stats import MIN_REPEATS, Sample, check_repeats, interleaved, ratio, table
from bench_retrieval import RawReader


def _async_split(endpoint: str, study: str, repeats: int) -> tuple[dict[str, Sample], dict]:
    """Per-stage latency of ``repeats`` async invocations (one at a time, after one warm-up), plus e2e, the
    rest and the non-model share of each request (``share``, %), and the last response."""
    from dicomflow.inference import endpoint as ep

    notifications = Notifications(endpoint)
    rows, response = [], {}
    for _ in range(repeats + 1):  # the first one warms the serving process up
        inv = ep.invoke_async(endpoint, {"studyInstanceUID": study, "outputs": ["sr", "seg"], "storeToPacs": True})
        note, done = notifications.wait(inv.inference_id)
        ok, data = ep.wait_result(inv, timeout_s=60)
        if not ok or note.get("invocationStatus") != "Completed":
            raise SystemExit(f"async inference failed: {note.get('failureReason') or data[:300]!r}")
        response = ep.with_queue_time(inv, json.loads(data))
        timing = response["timingMs"]
        timing["e2e"] = (done - inv.invoked_at) * 1000
        timing["rest"] = timing["e2e"] - timing["queue"] - timing["total"]
        timing["share"] = 100 * (timing["e2e"] - timing["model"]) / timing["e2e"]  # of this request
        rows.append(timing)
    rows = rows[1:]
    return {k: Sample(tuple(r.get(k, 0.0) for r in rows)) for k in rows[0]}, response


def _trained_artifact(home: Path, shapes: list[tuple[int, int, int]], args: argparse.Namespace) -> Path:
    """The training job's segmentation3d model trained on ``--train-per-size`` synthetic series of each served shape."""
    from training_channels import hippocampus_channel, run_entry, sm_layout

    from dicomflow.modeling.artifact import METADATA_FILE

    root = home / "trained"
    env = sm_layout(root)
    t0 = time.perf_counter()
    per_shape = args.train_per_size
    hippocampus_channel(root / "input/data/train", per_shape, seed=0, shape=shapes[0], more_shapes=tuple(shapes[1:]))
    r = run_entry(env, {"task": "segmentation3d", "epochs": args.epochs, "spatial_size": args.spatial_size,
                        "spacing": args.spacing, "intensity": args.intensity, "val_every": args.val_every,
                        "batch_size": 2, "lr": 0.01, "val_fraction": 0.2, "test_fraction": 0.0, "seed": 0},
                  timeout=7200)
    if r.returncode != 0:
        raise SystemExit(f"training the benchmark model failed:\n{r.stderr[-2000:]}")
    metrics = json.loads((root / "model" / METADATA_FILE).read_text())["metrics"]
    how = f"{args.spatial_size} patches at {args.spacing} mm" if args.spacing else args.spatial_size
    print(f"model: segmentation3d UNet, input {how}, {args.intensity} intensity, trained {args.epochs} epochs on "
          f"{per_shape * len(shapes)} series in {time.perf_counter() - t0:.0f} s; mean Dice on its "
          f"{metrics['val_items']} validation series {metrics['test_mean_dice']:.2f}")
    return root / "model"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help=f"timed repeats (>= {MIN_REPEATS})")
    parser.add_argument("--sizes", default="30,200")
    parser.add_argument("--spatial-size", default="64,64,64", help="the model's input size, Z,Y,X (multiples of 8)")
    parser.add_argument("--spacing", default="1", help="resample to this voxel spacing (mm) and use "
                        "--spatial-size patches with a sliding window")
    parser.add_argument("--whole-series", action="store_true", help="resize the whole series to --spatial-size "
                        "instead of resampling to --spacing")
    parser.add_argument("--epochs", type=int, default=20, help="training epochs of the benchmark model")
    parser.add_argument("--val-every", type=int, default=5, help="validate the benchmark model every N epochs")
    parser.add_argument("--intensity", choices=["percentile", "zscore"], default="zscore",
                        help="the benchmark model's intensity normalisation")
    parser.add_argument("--train-per-size", type=int, default=8, help="synthetic training series of each size")
    parser.add_argument("--untrained", action="store_true", help="serve an untrained UNet (dense masks)")
    args = parser.parse_args()
    check_repeats(args.repeats)
    if args.whole_series:
        args.spacing = ""

    try:
        with private_cloud() as local:
            run(local.home, args)
    except requests.RequestException as exc:
        raise SystemExit(f"benchmark failed talking to the local cloud: {exc}") from None


def run(home: Path, args: argparse.Namespace) -> None:
    from model_helpers import untrained_artifact

    from dicomflow.credentials import pacs_connection
    from dicomflow.demo import synthetic
    from dicomflow.dicom import dicomweb

    conn = pacs_connection()
    client = dicomweb.connect(conn)
    session = dicomweb.make_session(conn)
    sizes = [int(v) for v in args.sizes.split(",")]
    shapes = [(n, 256, 256) for n in sizes]
    model_dir = (untrained_artifact(home, "segmentation3d", ["anterior", "posterior"]) if args.untrained
                 else _trained_artifact(home, shapes, args))
    endpoint = serve_model(home, model_dir, "bench-seg", max_concurrency=1)
    retrieval, stage_rows = [], []
    for n, shape in zip(sizes, shapes, strict=True):
        series = synthetic.hippocampus_series(1, seed=1000 + n, shape=shape)[0]
        dicomweb.store(client, series.datasets)
        study, uid = series.study_uid, series.series_uid
        raw = RawReader(session, f"{conn.url}/studies/{study}/series/{uid}")
        times = interleaved({"raw read": raw,
                             "retrieve": lambda: dicomweb.retrieve_series(client, study, uid)},  # noqa: B023
                            args.repeats)
        retrieval.append([f"{n} slices", f"{len(raw.buffer) / 1e6:.1f}", times["raw read"].text(),
                          times["retrieve"].text(), f"{ratio(times['retrieve'], times['raw read']):.2f}"])
        stages, response = _async_split(endpoint, study, args.repeats)
        true_mm3 = float((series.label_volume > 0).sum()) * float(np.prod(series.spacing))
        stage_rows.append((n, stages, response, true_mm3))
    print(f"\nseries retrieval, ms median (min-max) over {args.repeats} repeats:")
    print(table(["series", "MB", "raw read (floor)", "retrieve (ours)", "x floor"], retrieval))
    print(f"\nend-to-end async latency by stage, ms median over {args.repeats} requests (SR+SEG encoded and "
          "stored); e2e and the non-model share with (min-max):")
    keys = ["queue", "query", "retrieve", "preprocess", "model", "postprocess", "encode", "stow", "rest"]
    print(table(["series", *keys, "e2e", "non-model %"],
                [[f"{n} slices", *(f"{row[k].median:.1f}" if k in row else "-" for k in keys),
                  row["e2e"].text(), row["share"].text()] for n, row, _, _ in stage_rows]))
    print("\nwhat the model found (total hippocampus; the SEG has one frame per marked slice and structure):")
    for n, _, response, true_mm3 in stage_rows:
        predicted = response["findings"]["volumesMm3"]["total"]
        seg = response["outputs"]["seg"]
        frames = client.retrieve_instance_metadata(response["studyInstanceUID"], seg["SeriesInstanceUID"],
                                                   seg["SOPInstanceUID"])["00280008"]["Value"][0]
        print(f"{n:>7} slices  predicted {predicted:>8.0f} mm3  true {true_mm3:>8.0f} mm3  "
              f"({100 * (predicted - true_mm3) / true_mm3:+.0f}%)  SEG frames {frames}")


if __name__ == "__main__":
    main()
