"""Active learning's learning curve: held-out mean AUROC against the number of labeled images, for images
chosen by a strategy (entropy by default) against images chosen at random, over several seeds, in one run.

Each seed draws its own pool of synthetic chest radiographs (:func:`dicomflow.demo.synthetic.chest_radiographs`,
the demo's images, 64 px model input); the first batch is the same random one for every strategy. Each round
trains the demo's chest configuration from scratch on the labeled images (``training_job/train.py`` as SageMaker
runs it: 8 epochs, batch 8, a quarter held for validation), scores the fixed test set (its own seed, never in a
pool) for the AUROC, and — for a strategy other than ``random`` — scores the rest of the pool with the model just
trained (:mod:`dicomflow.inference.scoring`, the code ``dicomflow label next`` runs) to pick the next batch by
:func:`dicomflow.groundtruth.active.uncertainty`. Labels are the seeder's truth (perfect annotators): what is
measured is which images are worth labeling, not the annotators.

Printed: per labeled count, the mean (min-max over seeds) test AUROC of each strategy; then the labels saved at
equal AUROC: for the strategy's AUROC at each count, the random count that reaches it (linear between measured
counts; none when random never gets there within the counts measured; negative when random gets there with fewer).

Usage: ``.venv/bin/python bench/bench_active_learning.py [--seeds 3] [--sizes 16,32,48,64] [--pool 160]
[--test 96] [--strategies entropy,random] [--json]``
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from training_channels import run_entry, sm_layout, write_manifest  # noqa: E402

from dicomflow.demo import synthetic  # noqa: E402
from dicomflow.groundtruth import active  # noqa: E402
from dicomflow.inference import scoring  # noqa: E402
from dicomflow.inference.service import InferenceService  # noqa: E402
from dicomflow.training.metrics import multilabel_auroc, nanmean  # noqa: E402

CLASSES = list(synthetic.CHEST_CLASSES)
HPS = {"task": "classification2d", "epochs": 8, "image_size": 64, "batch_size": 8, "val_fraction": 0.25}


def _targets(images: list) -> np.ndarray:
    return np.array([[float(c in im.labels) for c in CLASSES] for im in images])


def _train(work: Path, pool_dir: Path, images: list, chosen: list[int], seed: int) -> InferenceService:
    """The demo's chest model trained from scratch on ``chosen`` of ``images`` (files under ``pool_dir``)."""
    root = Path(tempfile.mkdtemp(prefix="round-", dir=work))
    env = sm_layout(root)
    channel = root / "input/data/train"
    (channel / "images").mkdir(parents=True, exist_ok=True)
    lines = []
    for i in chosen:
        os.link(pool_dir / f"{i:04d}.dcm", channel / "images" / f"{i:04d}.dcm")
        lines.append({"id": f"img{i}", "patient": f"p{i}", "images": [f"images/{i:04d}.dcm"],
                      "labels": [c for c in images[i].labels if c in CLASSES]})
    write_manifest(channel, lines, CLASSES)
    r = run_entry(env, {**HPS, "seed": seed}, timeout=1800)
    if r.returncode != 0:
        raise SystemExit(f"training failed: {r.stderr[-2000:]}")
    return InferenceService.from_model_dir(root / "model")


def _probabilities(svc: InferenceService, images: list) -> np.ndarray:
    inputs = [scoring.image_input(svc, im.dataset) for im in images]
    return np.concatenate([scoring.score_batch(svc.network, inputs[k:k + 32], activation=svc.activation).probabilities
                           for k in range(0, len(inputs), 32)])


def _next(strategy: str, svc: InferenceService, images: list, labeled: list[int], step: int, seed: int) -> list[int]:
    rest = [i for i in range(len(images)) if i not in set(labeled)]
    if strategy == "random":
        scores = active.uncertainty(np.zeros((len(rest), 1)), "random", seed=seed * 1000 + len(labeled))
    else:
        samples = None
        probs = _probabilities(svc, [images[i] for i in rest])
        if strategy == "mc-dropout":
            inputs = [scoring.image_input(svc, images[i].dataset) for i in rest]
            samples = scoring.score_batch(svc.network, inputs, mc_samples=active.MC_SAMPLES,
                                          seeds=[scoring.image_seed(str(i), seed) for i in rest]).samples
        scores = active.uncertainty(probs, strategy, activation=svc.activation, samples=samples)
    picked = active.rank([f"{i:04d}" for i in rest], list(scores), step)
    return labeled + [int(r.key) for r in picked]


def run(seeds: int, sizes: list[int], pool: int, test: int, strategies: list[str]) -> dict:
    work = Path(tempfile.mkdtemp(prefix="bench-active-"))
    held = synthetic.chest_radiographs(test, seed=9000, size=96)
    truth = _targets(held)
    curves: dict[str, dict[int, list[float]]] = {s: {n: [] for n in sizes} for s in strategies}
    started = time.perf_counter()
    for seed in range(seeds):
        images = synthetic.chest_radiographs(pool, seed=500 + seed, size=96)
        pool_dir = work / f"pool-{seed}"
        pool_dir.mkdir()
        for i, im in enumerate(images):
            im.dataset.save_as(pool_dir / f"{i:04d}.dcm", enforce_file_format=True)
        first = [int(k) for k in np.random.default_rng(seed).permutation(pool)[:sizes[0]]]
        first_model = _train(work, pool_dir, images, first, seed)
        first_auroc = nanmean(list(multilabel_auroc(_probabilities(first_model, held), truth, CLASSES).values()))
        for strategy in strategies:
            labeled, svc = first, first_model
            curves[strategy][sizes[0]].append(first_auroc)
            for prev, n in zip(sizes, sizes[1:], strict=False):
                labeled = _next(strategy, svc, images, labeled, n - prev, seed)
                svc = _train(work, pool_dir, images, labeled, seed)
                auroc = nanmean(list(multilabel_auroc(_probabilities(svc, held), truth, CLASSES).values()))
                curves[strategy][n].append(auroc)
                print(f"seed {seed} {strategy} {n} labeled: test mean AUROC {auroc:.3f}", file=sys.stderr, flush=True)
    return {"seeds": seeds, "sizes": sizes, "pool": pool, "test": test, "hyperparameters": HPS,
            "minutes": round((time.perf_counter() - started) / 60, 1),
            "auroc": {s: {str(n): v for n, v in c.items()} for s, c in curves.items()}}


def labels_saved(sizes: list[int], strategy: list[float], random: list[float]) -> list[float | None]:
    """For each count: how many more random labels reach the strategy's AUROC there (None: not within the counts)."""
    out: list[float | None] = []
    for n, target in zip(sizes, strategy, strict=True):
        needed = None
        for k in range(len(sizes)):
            if random[k] >= target:
                if k == 0:
                    needed = float(sizes[0])
                else:
                    lo, hi = random[k - 1], random[k]
                    frac = (target - lo) / (hi - lo) if hi > lo else 1.0
                    needed = sizes[k - 1] + frac * (sizes[k] - sizes[k - 1])
                break
        out.append(None if needed is None else round(needed - n, 1))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--sizes", default="16,32,48,64", help="labeled counts, rising (the first batch is random)")
    parser.add_argument("--pool", type=int, default=160, help="images each seed's pool holds")
    parser.add_argument("--test", type=int, default=96, help="held-out test images (one fixed set)")
    parser.add_argument("--strategies", default="entropy,random", help=f"from {', '.join(active.STRATEGIES)}")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    strategies = [s.strip() for s in args.strategies.split(",")]
    if "random" not in strategies:
        strategies.append("random")
    if sorted(sizes) != sizes or sizes[-1] > args.pool:
        raise SystemExit("--sizes must rise and stay within --pool")
    result = run(args.seeds, sizes, args.pool, args.test, strategies)
    means = {s: [statistics.mean(result["auroc"][s][str(n)]) for n in sizes] for s in strategies}
    result["labelsSaved"] = {s: labels_saved(sizes, means[s], means["random"]) for s in strategies if s != "random"}
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"test mean AUROC (mean, min-max over {args.seeds} seeds) on {args.test} held-out images; pool {args.pool} "
          f"per seed; {result['minutes']} min")
    print("labeled  " + "  ".join(f"{s:>22}" for s in strategies))
    for k, n in enumerate(sizes):
        cells = []
        for s in strategies:
            v = result["auroc"][s][str(n)]
            cells.append(f"{means[s][k]:.3f} ({min(v):.3f}-{max(v):.3f})".rjust(22))
        print(f"{n:>7}  " + "  ".join(cells))
    for s, saved in result["labelsSaved"].items():
        print(f"labels saved by {s} at equal AUROC: "
              + ", ".join(f"{n}: {'none' if v is None else v}" for n, v in zip(sizes, saved, strict=True)))


if __name__ == "__main__":
    main()
