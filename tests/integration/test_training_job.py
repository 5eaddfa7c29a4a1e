"""training_job/train.py run as SageMaker runs it: a subprocess with an /opt/ml-like layout and SM_* env.

Small synthetic data (dicomflow.demo.synthetic) where the image matters; every quality bar is also a margin over
a trivial baseline computed in the same test on the same split (tests/baselines.py). No timing thresholds.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch
from baselines import (
    item_labels,
    mean_dice,
    neighbour_label_agreement,
    prior_mask_dice,
    thumbnail_ridge_auroc,
    thumbnail_vectors,
)
from PIL import Image
from training_channels import ENTRY, chest_channel, hippocampus_channel, run_entry, sm_layout, write_manifest

from dicomflow.demo import loop, synthetic
from dicomflow.dicom.volume import load_files, load_image
from dicomflow.modeling.artifact import load_artifact
from dicomflow.modeling.embedding import embed, weights_version
from dicomflow.modeling.networks import build_network
from dicomflow.modeling.reference import input_profile, structure_volumes, unlike_training
from dicomflow.search.vectors import ImageVector, VectorIndex
from dicomflow.training.data import scan_manifest, split_by_patient

pytestmark = pytest.mark.slow

#: classification2d on 160 synthetic chest images (64 px, 10 epochs, 112 train / 48 val): the best validation
#: mean AUROC must reach this and beat the 8x8-thumbnail ridge baseline on the same split by MARGIN_AUROC
#: (measured: 0.81-0.82 against 0.71-0.73 over seeds 0 and 1; the class prior scores 0.5).
MIN_MEAN_AUROC = 0.75
MARGIN_AUROC = 0.05
#: the same model's embeddings of the 48 held-out images: the Jaccard-weighted precision@RETRIEVAL_K (the mean
#: label Jaccard between a query and each of its nearest) must beat an untrained DenseNet121's, 8x8
#: thumbnails and random vectors by MARGIN_RETRIEVAL (measured, seed 0: 0.315 against untrained 0.192,
#: thumbnails 0.182, random 0.172).
RETRIEVAL_K = 10
MARGIN_RETRIEVAL = 0.08
#: segmentation3d on 16 synthetic series (24x48x48, 20 epochs, 10 train / 3 val / 3 test): test mean Dice must
#: reach this and beat the no-image prior mask by MARGIN_DICE (measured: 0.85 against ~0.3).
MIN_TEST_DICE = 0.7
MARGIN_DICE = 0.25


def _metrics(stdout: str, name: str) -> list[float]:
    import re

    return [float(v) for v in re.findall(rf"\b{name}=([-+0-9.eE]+|nan);", stdout)]


def test_classification2d_beats_a_thumbnail_model_and_writes_a_loadable_artifact(tmp_path) -> None:
    env = sm_layout(tmp_path)
    channel = tmp_path / "input/data/train"
    classes = chest_channel(channel, 160, seed=0, size=64)
    r = run_entry(env, {"task": "classification2d", "epochs": 10, "image_size": 64, "batch_size": 8,
                        "val_fraction": 0.3, "seed": 0})
    assert r.returncode == 0, r.stderr[-3000:]
    aurocs = _metrics(r.stdout, "val_mean_auroc")
    assert len(aurocs) == 10 and _metrics(r.stdout, "epoch") == list(range(1, 11))
    train, val = split_by_patient(scan_manifest(channel, "classification2d").items, [0.3], 0)
    baseline = thumbnail_ridge_auroc(train, val)
    print(f"\nclassification2d: best val mean AUROC {max(aurocs):.3f}, thumbnail ridge {baseline:.3f}, prior 0.5")
    assert max(aurocs) >= MIN_MEAN_AUROC and max(aurocs) >= baseline + MARGIN_AUROC, (aurocs, baseline)
    model = load_artifact(tmp_path / "model")
    assert model.task == "classification2d" and model.labels == classes
    assert model.metadata["metrics"]["best_metric"] == pytest.approx(max(aurocs), abs=1e-6)
    assert model.metadata["metrics"]["val_items"] == len(val) == 48
    assert len(model.metadata["manifest_sha256"]) == 64
    # what results will say of themselves: the validation AUROC per class, the training inputs' ranges
    expected = model.metadata["expected"]
    assert set(expected["classes"]) == set(classes) and expected["meanAuroc"] == pytest.approx(max(aurocs))
    assert model.metadata["reference"]["items"] == len(train)
    assert {"intensity_p99", "fov_x_mm", "spacing_y_mm"} <= set(model.metadata["reference"]["profile"])
    assert "## Metrics" in (tmp_path / "model" / "model_card.md").read_text()
    assert list((tmp_path / "output/data/tensorboard").glob("events.out.tfevents.*"))
    assert not (tmp_path / "output/failure").exists()
    _embeddings_find_images_with_the_same_findings(model, val, tmp_path / "index")


def _embeddings_find_images_with_the_same_findings(model, held_out: list, where) -> None:
    """The trained model's embeddings, through the image index, find held-out images that share the query's
    findings better than the thumbnails and the class prior do."""
    transform = model.transform
    images = [load_files(it.images)[0] for it in held_out]
    images = [im[im.shape[0] // 2] if im.ndim == 3 else im for im in images]  # as the serving container does
    with torch.inference_mode():
        vectors = np.concatenate([embed(model.network, transform(im).unsqueeze(0)).numpy() for im in images])
    torch.manual_seed(0)
    untrained = build_network(model.metadata["network"]).eval()  # the same DenseNet121, never trained
    with torch.inference_mode():
        untrained_vectors = np.concatenate([embed(untrained, transform(im).unsqueeze(0)).numpy() for im in images])
    labels = np.array([it.labels for it in held_out])
    ours = neighbour_label_agreement(vectors, labels, RETRIEVAL_K)
    raw = neighbour_label_agreement(untrained_vectors, labels, RETRIEVAL_K)
    thumbs = neighbour_label_agreement(thumbnail_vectors(held_out), labels, RETRIEVAL_K)
    rng = np.random.default_rng(0)
    prior = float(np.mean([neighbour_label_agreement(rng.standard_normal(vectors.shape), labels, RETRIEVAL_K)
                           for _ in range(20)]))
    at5 = neighbour_label_agreement(vectors, labels, 5)
    print(f"retrieval: Jaccard-weighted precision@{RETRIEVAL_K} embeddings {ours:.3f} (@5 {at5:.3f}), untrained "
          f"DenseNet121 {raw:.3f}, thumbnails {thumbs:.3f}, random {prior:.3f}")
    assert ours >= max(raw, thumbs, prior) + MARGIN_RETRIEVAL, (ours, raw, thumbs, prior)
    # the index answers as the brute-force ranking does, never with the query itself
    with VectorIndex.open(where, model={"name": "chest", "version": weights_version(model.network)},
                          dimensions=vectors.shape[1]) as ix:
        ix.add([ImageVector(sop_uid=f"1.2.826.0.1.3680043.8.498.7.{i}", study_uid=f"1.2.826.0.1.3680043.8.498.8.{i}",
                            vector=v) for i, v in enumerate(vectors)])
        found = ix.similar_to("1.2.826.0.1.3680043.8.498.7.0", RETRIEVAL_K)
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    expected = [int(i) for i in np.argsort(-(unit[1:] @ unit[0]), kind="stable")[:RETRIEVAL_K] + 1]
    assert [n.sop_uid.rsplit(".", 1)[1] for n in found] == [str(i) for i in expected]


def test_resume_continues_the_epoch_count(tmp_path) -> None:
    env = sm_layout(tmp_path)
    chest_channel(tmp_path / "input/data/train", 12, size=32)
    hps = {"task": "classification2d", "image_size": 32, "batch_size": 4, "val_fraction": 0.25}
    first = run_entry(env, {**hps, "epochs": 2})
    assert first.returncode == 0, first.stderr[-3000:]
    assert _metrics(first.stdout, "epoch") == [1, 2]
    second = run_entry(env, {**hps, "epochs": 3})
    assert second.returncode == 0, second.stderr[-3000:]
    assert "continuing at epoch 3 of 3" in second.stdout
    assert _metrics(second.stdout, "epoch") == [3]
    history = load_artifact(tmp_path / "model").metadata["history"]
    assert [h["epoch"] for h in history] == [1, 2, 3]


def test_val_every_validates_on_those_epochs_and_the_last(tmp_path) -> None:
    env = sm_layout(tmp_path)
    chest_channel(tmp_path / "input/data/train", 12, size=32)
    r = run_entry(env, {"task": "classification2d", "image_size": 32, "batch_size": 4, "val_fraction": 0.25,
                        "epochs": 3, "val_every": 2})
    assert r.returncode == 0, r.stderr[-3000:]
    assert _metrics(r.stdout, "epoch") == [1, 2, 3] and len(_metrics(r.stdout, "val_loss")) == 2
    metadata = load_artifact(tmp_path / "model").metadata
    assert [h["epoch"] for h in metadata["history"] if "val_loss" in h] == [2, 3]
    assert metadata["metrics"]["best_epoch"] in (2, 3)
    # the curves: loss per epoch and the validation AUROC with one line per class, drawn from that history
    labels = load_artifact(tmp_path / "model").labels
    assert [h["epoch"] for h in metadata["history"] if {f"class/{c}" for c in labels} <= set(h)] == [2, 3], (
        labels, metadata["history"][-1])
    curves = tmp_path / "output/data/curves"
    assert sorted(p.name for p in curves.iterdir()) == ["loss.png", "val_mean_auroc.png"]
    assert "training curves: curves/loss.png, curves/val_mean_auroc.png in the output data" in r.stdout
    for name in ("loss.png", "val_mean_auroc.png"):
        with Image.open(curves / name) as im:
            assert im.format == "PNG" and im.size == (640, 400)
            colours = len(set(im.convert("RGB").getdata()))
            assert colours > 50, (name, colours)  # lines, markers and text drawn, not a blank canvas


def test_segmentation3d_beats_the_prior_mask_and_reports(tmp_path) -> None:
    env = sm_layout(tmp_path)
    channel = tmp_path / "input/data/train"
    hippocampus_channel(channel, 16, seed=0, shape=(24, 48, 48))
    r = run_entry(env, {"task": "segmentation3d", "epochs": 20, "spatial_size": "24,48,48", "batch_size": 2,
                        "lr": 0.01, "val_fraction": 0.2, "test_fraction": 0.2})
    assert r.returncode == 0, r.stderr[-3000:]
    report = json.loads((tmp_path / "output/data/test_report.json").read_text())
    assert report["split"] == "test" and report["count"] == 3
    train, _, test = split_by_patient(scan_manifest(channel, "segmentation3d").items, [0.2, 0.2], 0)
    baseline = prior_mask_dice(item_labels(train), item_labels(test), structures=2)
    print(f"\nsegmentation3d: test mean Dice {report['mean_dice']:.3f}, no-image prior mask {baseline:.3f}")
    assert report["mean_dice"] >= MIN_TEST_DICE and report["mean_dice"] >= baseline + MARGIN_DICE, (report, baseline)
    assert set(report["classes"]) == {"anterior", "posterior"}
    assert {"dice", "jaccard", "sensitivity", "specificity"} <= set(report["classes"]["anterior"])
    assert report["best_volume"]["id"] and report["worst_volume"]["id"]
    assert _metrics(r.stdout, "test_mean_dice") == [pytest.approx(report["mean_dice"], abs=1e-6)]
    model = load_artifact(tmp_path / "model")
    assert model.labels == ["anterior", "posterior"] and (tmp_path / "model/test_report.json").is_file()


def test_classification3d_trains(tmp_path) -> None:
    env = sm_layout(tmp_path)
    hippocampus_channel(tmp_path / "input/data/train", 6, shape=(16, 24, 24), classification=True)
    r = run_entry(env, {"task": "classification3d", "epochs": 1, "spatial_size": "32,32,32", "batch_size": 2,
                        "val_fraction": 0.34})
    assert r.returncode == 0, r.stderr[-3000:]
    model = load_artifact(tmp_path / "model")
    assert model.task == "classification3d" and model.preprocess["spatial_size"] == [32, 32, 32]


def test_skipped_lines_are_counted_and_no_usable_image_fails(tmp_path) -> None:
    env = sm_layout(tmp_path)
    channel = tmp_path / "input/data/train"
    classes = chest_channel(channel, 6, size=32)
    lines = [json.loads(x) for x in (channel / "manifest.jsonl").read_text().splitlines()]
    lines.append({"id": "gone", "patient": "px", "images": ["images/missing.dcm"], "labels": []})
    write_manifest(channel, lines, classes)
    ok = run_entry(env, {"task": "classification2d", "epochs": 1, "image_size": 32, "val_fraction": 0.34})
    assert ok.returncode == 0, ok.stderr[-3000:]
    assert _metrics(ok.stdout, "skipped_items") == [1]
    assert "skipped manifest line 7" in ok.stderr

    write_manifest(channel, lines[-1:], classes)
    bad = run_entry(env, {"task": "classification2d", "epochs": 1, "image_size": 32})
    assert bad.returncode != 0
    reason = (tmp_path / "output/failure").read_text()
    assert reason.startswith("DatasetError: no usable image") and "missing=1" in reason

    hp = run_entry(env, {"task": "classification2d", "epochs": 0})
    assert hp.returncode == 2 and "epochs" in (tmp_path / "output/failure").read_text()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_instances_train_with_gloo_and_write_one_artifact(tmp_path) -> None:
    channel = tmp_path / "data"
    chest_channel(channel, 16, size=32)
    port = str(_free_port())
    procs = []
    for host in ("algo-1", "algo-2"):
        env = sm_layout(tmp_path / host)
        env.update({"SM_CHANNEL_TRAIN": str(channel), "SM_HOSTS": '["algo-1", "algo-2"]', "SM_CURRENT_HOST": host,
                    "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port, "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
        argv = [sys.executable, str(ENTRY), "--task", "classification2d", "--epochs", "2", "--image_size", "32",
                "--batch_size", "4", "--val_fraction", "0.25"]
        procs.append(subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1][-2000:] for o in outs]
    assert (tmp_path / "algo-1/model/dicomflow_model.json").is_file()
    assert not list((tmp_path / "algo-2/model").iterdir())
    assert _metrics(outs[0][0], "epoch") == [1, 2] and _metrics(outs[1][0], "epoch") == []
    meta = load_artifact(tmp_path / "algo-1/model").metadata
    # rank 0 wrote the artifact with all 12 training items (16 patients, 4 held out), each rank a shard of them
    assert meta["metrics"]["train_items"] == 12 and np.isfinite(meta["metrics"]["train_loss"])


#: The demo's segmentation configuration (DemoConfig "full": 40 series of 32x48x48, 30 epochs, cosine learning
#: rate) against the seed design's bar, on 8 held-out series of two other seeds: mean Dice >= 0.90 and every total
#: volume within +-5 % (HippoVolume.AI expects ~0.90). Measured with training seeds 0 and 1: Dice 0.954 / 0.956,
#: volumes -2.7 ... +4.6 % / -4.3 ... +3.8 %; the prior mask scores ~0.2. (20 series, 40 epochs, constant rate:
#: the smallest series was +7.9 % over; 40 series, 20 epochs: +7.1 % with seed 1.)
SEED_DICE = 0.90
SEED_VOLUME_TOLERANCE = 0.05


def test_the_demo_segmentation_configuration_reaches_the_seed_designs_quality(tmp_path) -> None:
    cfg = loop.DemoConfig.preset("full")
    hps = loop.training_hyperparameters(cfg)["segmentation3d"]
    env = sm_layout(tmp_path)
    channel = tmp_path / "input/data/train"
    hippocampus_channel(channel, cfg.hippo_train, seed=cfg.seed, shape=cfg.hippo_shape)
    r = run_entry(env, {"task": "segmentation3d", **hps})
    assert r.returncode == 0, r.stderr[-3000:]
    model = load_artifact(tmp_path / "model")
    pre = model.transform
    held_out = [s for seed in (9090, 4242) for s in synthetic.hippocampus_series(4, seed=seed, shape=cfg.hippo_shape)]
    figures = []
    for series in held_out:
        array, geom = load_image(series.datasets)
        with torch.inference_mode():
            logits = pre.run_network(model.network, pre(array, geom.spacing)[None])
        label = pre.label_map(logits[0], array.shape)
        predicted = structure_volumes(label, geom.spacing, model.structures)["total"]
        true = structure_volumes(series.label_volume, geom.spacing, model.structures)["total"]
        profile = input_profile(array, geom.spacing)
        assert unlike_training(model.metadata["reference"], profile, {"total": predicted}) == []
        figures.append((mean_dice(label, series.label_volume, 2), true, predicted))
    train = scan_manifest(channel, "segmentation3d").items
    prior = prior_mask_dice(item_labels(train), [s.label_volume for s in held_out], structures=2)
    print("\ndemo segmentation configuration, held-out (Dice, true mm3, predicted mm3):",
          [(round(d, 3), round(t), round(p)) for d, t, p in figures], f"prior mask {prior:.3f}")
    dice = float(np.mean([d for d, _, _ in figures]))
    assert dice >= SEED_DICE and dice >= prior + MARGIN_DICE, (dice, prior)
    for _, true, predicted in figures:
        assert abs(predicted - true) / true <= SEED_VOLUME_TOLERANCE, figures
