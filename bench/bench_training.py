"""Training throughput: the real data pipeline against the same model fed ready tensors, in one run.

For classification2d (DenseNet121 at 224x224) and segmentation3d (3D UNet at 32x48x40 by default):
synthetic DICOM files are written to a temp dir, loaded through dicomflow.training's dataset
(pydicom decode + dicomflow.modeling.preprocess, MONAI CacheDataset) and DataLoader, and trained for a few
steps; then the same model trains the same number of steps on batches already in memory on the
device. data stall = 1 - ready_time / pipeline_time (the share of step time spent waiting on data).

    .venv/bin/python bench/bench_training.py [--steps 3] [--batch 4] [--cache memory|disk|none]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from training_channels import chest_channel, hippocampus_channel  # noqa: E402

from dicomflow.modeling.artifact import default_preprocess  # noqa: E402
from dicomflow.modeling.networks import build_network, network_spec  # noqa: E402
from dicomflow.modeling.preprocess import build_transform  # noqa: E402
from dicomflow.training.data import make_dataset, scan_manifest  # noqa: E402


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def bench(task: str, channel: Path, size: list[int], steps: int, batch: int, cache: str, workers: int,
          device: torch.device) -> dict:
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

    # alternate the two twice and keep the best of each: less noise from other load on the machine
    pipeline = run_pipeline()
    ready = run_ready()
    pipeline = min(pipeline, run_pipeline())
    ready = min(ready, run_ready())
    n = steps * batch
    return {"task": task, "size": "x".join(map(str, size)), "batch": batch, "steps": steps, "cache": cache,
            "cache_fill_s": round(cache_fill, 2), "pipeline_per_s": round(n / pipeline, 2),
            "ready_per_s": round(n / ready, 2), "data_stall": round(max(0.0, 1 - ready / pipeline), 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--cache", default="memory", choices=["memory", "disk", "none"])
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--spatial-size", default="32,48,40")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    n_items = args.batch * 2
    tmp = Path(tempfile.mkdtemp(prefix="dicomflow-bench-"))
    chest_channel(tmp / "chest", n_items, size=512)
    spatial = [int(v) for v in args.spatial_size.split(",")]
    hippocampus_channel(tmp / "hippo", n_items, shape=tuple(spatial))
    rows = [
        bench("classification2d", tmp / "chest", [args.image_size] * 2, args.steps, args.batch, args.cache,
              args.workers, device),
        bench("segmentation3d", tmp / "hippo", spatial, args.steps, args.batch, args.cache, args.workers, device),
    ]
    if args.json:
        print(json.dumps({"device": str(device), "rows": rows}, indent=2))
        return
    unit = {"classification2d": "img/s", "segmentation3d": "vol/s"}
    print(f"device: {device} ({torch.get_num_threads()} threads), cache={args.cache}, workers={args.workers}")
    print(f"{'task':<18}{'size':>10}{'batch':>6}{'pipeline':>12}{'ready':>12}{'stall':>8}{'cache fill':>12}")
    for r in rows:
        u = unit[r["task"]]
        print(f"{r['task']:<18}{r['size']:>10}{r['batch']:>6}{r['pipeline_per_s']:>8.2f} {u}"
              f"{r['ready_per_s']:>8.2f} {u}{r['data_stall'] * 100:>7.1f}%{r['cache_fill_s']:>11.2f}s")


if __name__ == "__main__":
    main()
