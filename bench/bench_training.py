"""Training throughput: the real data pipeline against the same model fed ready tensors, in one run.

For classification2d (DenseNet121 at 224x224) and segmentation3d (3D UNet at 32x48x40 by default):
synthetic DICOM files are written to a temp dir, loaded through dicomflow.training's dataset
(pydicom decode + dicomflow.modeling.preprocess, MONAI CacheDataset) and DataLoader, and trained for a few
steps; then the same model trains the same number of steps on batches already in memory on the
device (the floor: no data work at all). The two alternate ``--repeats`` times; data stall =
1 - ready_time / pipeline_time of each pair (the share of step time spent waiting on data), reported
as median (min-max) and never clamped: a negative stall means the two were within the noise.

    .venv/bin/python bench/bench_training.py [--steps 3] [--repeats 5] [--batch 4] [--cache memory|disk|none]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch
from _stats import MIN_REPEATS, Sample, check_repeats, table

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from training_channels import chest_channel, hippocampus_channel  # noqa: E402

from dicomflow.modeling.artifact import default_preprocess  # noqa: E402
from dicomflow.modeling.networks import build_network, network_spec  # noqa: E402
from dicomflow.modeling.preprocess import build_transform  # noqa: E402
from dicomflow.training.data import make_dataset, scan_manifest  # noqa: E402


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def bench(task: str, channel: Path, size: list[int], steps: int, repeats: int, batch: int, cache: str,
          workers: int, device: torch.device) -> dict:
    scan = scan_manifest(channel, task)
    labels = scan.classes
    pre = build_transform(default_preprocess(task, size))
    started = time.perf_counter()
    ds = make_dataset(scan.items, pre, task, cache, Path(tempfile.mkdtemp()) / "cache", workers)
    cache_fill = time.perf_counter() - started
    loader = torch.utils.data.DataLoader(ds, batch_size=batch, shuffle=True, num_workers=workers, drop_last=True,
                                         persistent_workers=workers > 0, pin_memory=device.type == "cuda")
    model = build_network(network_spec(task, labels if task != "segmentation3d" else ["a", "p"])).to(device)
    if task == "segmentation3d":
        from monai.losses import DiceCELoss

        loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    else:
        loss_fn = torch.nn.BCEWithLogitsLoss()
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    model.train()

    def step(image: torch.Tensor, target: torch.Tensor) -> None:
        opt.zero_grad(set_to_none=True)
        loss_fn(model(image), target).backward()
        opt.step()

    first = next(iter(loader))
    step(first["image"].to(device), first["target"].to(device))  # warm-up (kernels, allocator)
    _sync(device)
    ready_image, ready_target = first["image"].to(device), first["target"].to(device)

    def run_pipeline() -> float:
        done, t0 = 0, time.perf_counter()
        while done < steps:
            for b in loader:
                step(b["image"].to(device, non_blocking=True), b["target"].to(device, non_blocking=True))
                done += 1
                if done == steps:
                    break
        _sync(device)
        return time.perf_counter() - t0

    def run_ready() -> float:
        t0 = time.perf_counter()
        for _ in range(steps):
            step(ready_image, ready_target)
        _sync(device)
        return time.perf_counter() - t0

    pipeline, ready = [], []
    for _ in range(repeats):  # alternate, so a slow spell of the machine falls on both
        pipeline.append(run_pipeline())
        ready.append(run_ready())
    n = steps * batch
    stall = Sample(tuple(100 * (1 - r / p) for p, r in zip(pipeline, ready, strict=True)))
    return {"task": task, "size": "x".join(map(str, size)), "batch": batch, "steps": steps, "cache": cache,
            "repeats": repeats, "cache_fill_s": round(cache_fill, 2),
            "pipeline_per_s": Sample(tuple(n / t for t in pipeline)).as_dict(),
            "ready_per_s": Sample(tuple(n / t for t in ready)).as_dict(),
            "data_stall_pct": stall.as_dict(1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=3, help="training steps per timed run")
    ap.add_argument("--repeats", type=int, default=5, help=f"timed runs of each way (>= {MIN_REPEATS})")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--cache", default="memory", choices=["memory", "disk", "none"])
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--spatial-size", default="32,48,40")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    check_repeats(args.repeats)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    n_items = args.batch * 2
    tmp = Path(tempfile.mkdtemp(prefix="dicomflow-bench-"))
    chest_channel(tmp / "chest", n_items, size=512)
    spatial = [int(v) for v in args.spatial_size.split(",")]
    hippocampus_channel(tmp / "hippo", n_items, shape=tuple(spatial))
    rows = [
        bench("classification2d", tmp / "chest", [args.image_size] * 2, args.steps, args.repeats, args.batch,
              args.cache, args.workers, device),
        bench("segmentation3d", tmp / "hippo", spatial, args.steps, args.repeats, args.batch, args.cache,
              args.workers, device),
    ]
    if args.json:
        print(json.dumps({"device": str(device), "rows": rows}, indent=2))
        return
    unit = {"classification2d": "img/s", "segmentation3d": "vol/s"}
    print(f"device: {device} ({torch.get_num_threads()} threads), cache={args.cache}, workers={args.workers}; "
          f"median (min-max) over {args.repeats} alternating runs of {args.steps} steps")

    def text(d: dict, digits: int = 2) -> str:
        return f"{d['median']:.{digits}f} ({d['min']:.{digits}f}-{d['max']:.{digits}f})"

    print(table(["task", "size", "batch", "pipeline", "ready tensors (floor)", "data stall %", "cache fill s"],
                [[r["task"], r["size"], str(r["batch"]), f"{text(r['pipeline_per_s'])} {unit[r['task']]}",
                  f"{text(r['ready_per_s'])} {unit[r['task']]}", text(r["data_stall_pct"], 1),
                  f"{r['cache_fill_s']:.2f}"] for r in rows]))


if __name__ == "__main__":
    main()
