"""dicomflow.training pieces (no subprocess): hyperparameters, metrics, manifest scan, split, artifact."""

from __future__ import annotations

import json
import re
import tarfile

import numpy as np
import pytest
import torch
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from training_channels import chest_channel, hippocampus_channel, write_manifest

from dicomflow.modeling.artifact import ArtifactError, load_artifact, save_artifact
from dicomflow.modeling.networks import OneDnnConv3d, build_network, network_spec, use_onednn_conv3d
from dicomflow.modeling.preprocess import build_transform, default_spec
from dicomflow.training import METRIC_DEFINITIONS
from dicomflow.training.data import DatasetError, make_dataset, scan_manifest, split_by_patient
from dicomflow.training.hyperparameters import HyperparameterError, parse
from dicomflow.training.metrics import auroc, format_metrics, overlap_metrics, segmentation_report


def test_hyperparameters_from_sm_hps_and_argv() -> None:
    env = {"SM_HPS": json.dumps({"epochs": 3, "lr": "0.01", "sagemaker_program": "train.py"})}
    hp = parse(["--task", "segmentation3d", "--epochs", "4", "--amp", "true", "--spatial_size", '"16,24,24"'], env)
    assert (hp.task, hp.epochs, hp.lr, hp.amp, hp.spatial_shape) == ("segmentation3d", 4, 0.01, True, [16, 24, 24])
    with pytest.raises(HyperparameterError, match="unknown hyperparameter 'epoch'"):
        parse(["--epoch", "3"], {})
    with pytest.raises(HyperparameterError, match="epochs must be int"):
        parse(["--epochs", "many"], {})
    with pytest.raises(HyperparameterError, match="multiple of 8"):
        parse(["--task", "segmentation3d", "--spatial_size", "16,24,20"], {})
    with pytest.raises(HyperparameterError, match="task must be one of"):
        parse(["--task", "detection"], {})


def test_metric_lines_match_the_definitions() -> None:
    line = format_metrics({"epoch": 3, "train_loss": 0.25, "val_mean_auroc": float("nan"), "best_metric": 1e-7})
    assert line == "epoch=3; train_loss=0.250000; val_mean_auroc=nan; best_metric=0.000000;"
    found = {}
    for definition in METRIC_DEFINITIONS:
        m = re.search(definition["Regex"], line)
        if m:
            found[definition["Name"]] = float(m.group(1))
    assert found == {"epoch": 3.0, "train_loss": 0.25, "best_metric": 0.0}
    # 'val_loss' must not match inside 'train_val_loss'-like names
    assert not re.search(next(d["Regex"] for d in METRIC_DEFINITIONS if d["Name"] == "val_loss"), "xval_loss=1;")


def test_auroc_and_overlap() -> None:
    assert auroc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == pytest.approx(0.75)
    assert auroc([0.5, 0.5], [0, 1]) == pytest.approx(0.5)
    assert np.isnan(auroc([0.1, 0.2], [1, 1]))
    truth = np.zeros((4, 4), np.uint8)
    truth[:2] = 1
    pred = np.zeros((4, 4), np.uint8)
    pred[:1] = 1
    m = overlap_metrics(pred, truth, 2)
    assert m[1]["dice"] == pytest.approx(2 * 4 / (4 + 8)) and m[1]["sensitivity"] == pytest.approx(0.5)
    assert m[1]["specificity"] == 1.0 and m[2]["dice"] == 1.0  # absent in both
    report = segmentation_report({"a": m, "b": overlap_metrics(truth, truth, 2)}, ["x", "y"])
    assert report["best_volume"]["id"] == "b" and report["worst_volume"]["id"] == "a"


def _sr(path) -> None:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.88.22"
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.88.22"
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.Modality = "SR"
    ds.save_as(path, enforce_file_format=True)


def test_scan_skips_missing_and_sr_and_counts(tmp_path) -> None:
    classes = chest_channel(tmp_path, 6, size=32)
    lines = [json.loads(x) for x in (tmp_path / "manifest.jsonl").read_text().splitlines()]
    _sr(tmp_path / "images" / "sr.dcm")
    (tmp_path / "images" / "junk.dcm").write_bytes(b"not dicom")
    lines += [{"id": "gone", "patient": "p9", "images": ["images/missing.dcm"], "labels": []},
              {"id": "sr", "patient": "p9", "images": ["images/sr.dcm"], "labels": []},
              {"id": "junk", "patient": "p9", "images": ["images/junk.dcm"], "labels": []}]
    write_manifest(tmp_path, lines, classes)
    scan = scan_manifest(tmp_path, "classification2d")
    assert len(scan.items) == 6
    assert dict(scan.skipped) == {"missing": 1, "not_image": 1, "unreadable": 1}
    assert all(len(it.labels) == len(classes) for it in scan.items)
    write_manifest(tmp_path, lines[6:], classes)
    with pytest.raises(DatasetError, match="no usable image"):
        scan_manifest(tmp_path, "classification2d")


def test_split_keeps_patients_on_one_side(tmp_path) -> None:
    chest_channel(tmp_path, 12, size=32)
    items = scan_manifest(tmp_path, "classification2d").items
    for it in items:
        it.patient = f"p{int(it.id[3:]) // 2}"  # two images per patient
    train, val, test = split_by_patient(items, [0.25, 0.25], seed=1)
    sides = [{it.patient for it in part} for part in (train, val, test)]
    assert not (sides[0] & sides[1]) and not (sides[0] & sides[2]) and not (sides[1] & sides[2])
    assert len(train) + len(val) + len(test) == 12 and val and test
    assert [it.id for it in split_by_patient(items, [0.25, 0.25], seed=1)[1]] == [it.id for it in val]
    with pytest.raises(DatasetError, match="cannot be split"):
        split_by_patient(items[:2], [0.2, 0.2], seed=0)


def test_artifact_round_trip(tmp_path) -> None:
    labels = ["a", "b"]
    spec = network_spec("classification2d", labels)
    net = build_network(spec)
    save_artifact(tmp_path / "model", task="classification2d", labels=labels, network=net, network_spec=spec,
                  preprocess=default_spec("2d", [32, 32]), metrics={"val_mean_auroc": 0.9}, manifest_sha256="x")
    with tarfile.open(tmp_path / "model.tar.gz", "w:gz") as tar:
        for p in (tmp_path / "model").iterdir():
            tar.add(p, arcname=p.name)
    loaded = load_artifact(tmp_path / "model.tar.gz")
    assert loaded.task == "classification2d" and loaded.labels == labels and not loaded.network.training
    x = loaded.transform(np.random.default_rng(0).random((50, 40)).astype(np.float32))[None]
    ts = torch.jit.load(str(tmp_path / "model" / "model.ts"))
    net.eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded.network(x), ts(x))
        torch.testing.assert_close(loaded.network(x), net(x))
    with pytest.raises(ArtifactError, match="not a dicomflow model artifact"):
        load_artifact(tmp_path)


@pytest.mark.parametrize(("task", "size"), [("segmentation3d", (16, 24, 24)), ("classification3d", (32, 32, 32))])
def test_onednn_conv3d_gives_the_stock_outputs(task, size) -> None:
    torch.manual_seed(0)
    net = build_network(network_spec(task, ["a", "b"])).eval()
    stock = build_network(network_spec(task, ["a", "b"])).eval()
    stock.load_state_dict(net.state_dict())
    fast = use_onednn_conv3d(net)
    wrapped = [m for m in fast.modules() if isinstance(m, OneDnnConv3d)]
    assert wrapped and len(wrapped) == sum(type(m) is torch.nn.Conv3d for m in fast.modules())
    with torch.inference_mode():
        for batch in (1, 3):  # batch 1 is where stock PyTorch takes its slow convolution path
            x = torch.rand(batch, 1, *size)
            torch.testing.assert_close(fast(x), stock(x), rtol=1e-4, atol=1e-4)
    x = torch.rand(1, 1, *size, requires_grad=True)  # under autograd the stock convolution runs
    fast(x).sum().backward()
    assert x.grad is not None


def test_spacing_hyperparameter() -> None:
    assert parse([], {}).voxel_spacing is None
    assert parse(["--task", "segmentation3d", "--spacing", "1"], {}).voxel_spacing == [1.0, 1.0, 1.0]
    assert parse(["--task", "segmentation3d", "--spacing", "1.2,1,1"], {}).voxel_spacing == [1.2, 1.0, 1.0]
    for bad in ("a", "0", "1,1"):
        with pytest.raises(HyperparameterError, match="spacing must"):
            parse(["--task", "segmentation3d", "--spacing", bad], {})
    with pytest.raises(HyperparameterError, match="spacing is for segmentation3d"):
        parse(["--task", "classification3d", "--spacing", "1"], {})
    for name in ("patches_per_volume", "val_every"):
        with pytest.raises(HyperparameterError, match="patches_per_volume and val_every must be >= 1"):
            parse(["--task", "segmentation3d", "--spacing", "1", f"--{name}", "0"], {})


def test_intensity_hyperparameter_sets_the_recorded_normalisation(tmp_path) -> None:
    from dicomflow.training.environment import from_env
    from dicomflow.training.loop import Trainer

    tenv = from_env({"SM_ROOT_DIR": str(tmp_path)})
    default = Trainer(parse(["--task", "segmentation3d"], {}), tenv).pre.spec["intensity"]
    assert default == {"mode": "percentile", "lower": 0.5, "upper": 99.5}
    zscore = Trainer(parse(["--task", "segmentation3d", "--spacing", "1", "--intensity", "zscore"], {}), tenv)
    assert zscore.pre.spec["intensity"] == {"mode": "zscore"}
    image = zscore.pre(np.arange(4 * 8 * 8, dtype=np.float32).reshape(4, 8, 8), (1.0, 1.0, 1.0))
    assert float(image.mean()) == pytest.approx(0, abs=1e-5) and float(image.std()) == pytest.approx(1, abs=1e-2)
    with pytest.raises(HyperparameterError, match="intensity must be percentile or zscore"):
        parse(["--intensity", "minmax"], {})


def test_patch_dataset_gives_seeded_patches_around_structures_and_elsewhere(tmp_path) -> None:
    hippocampus_channel(tmp_path, 2, seed=0, shape=(32, 64, 64))  # 26x43x43 voxels at 1.5 mm
    items = scan_manifest(tmp_path, "segmentation3d").items
    pre = build_transform({**default_spec("3d", [8, 8, 8]), "spacing": 1.5})

    def patches(seed: int) -> list[dict]:
        ds = make_dataset(items, pre, "segmentation3d", "none", None, patches=6, seed=seed)
        return [patch for k in range(len(ds)) for patch in ds[k]]

    first = patches(seed=3)
    assert len(first) == 12 and all(p["image"].shape == p["target"].shape == (1, 8, 8, 8) for p in first)
    with_structure = sum(bool((p["target"] > 0).any()) for p in first)
    assert 0 < with_structure < 12  # around the structures and elsewhere
    assert all(torch.equal(a["image"], b["image"]) for a, b in zip(first, patches(seed=3), strict=True))


def test_cosine_schedule_runs_from_lr_to_lr_over_epochs_and_constant_stays() -> None:
    from dicomflow.training.hyperparameters import HyperparameterError, parse

    cosine = parse(["--lr", "0.01", "--epochs", "5", "--lr_schedule", "cosine"])
    rates = [cosine.lr_at(e) for e in range(1, 6)]
    assert rates[0] == pytest.approx(0.01) and rates[-1] == pytest.approx(0.002)
    assert all(a > b for a, b in zip(rates, rates[1:], strict=False))
    assert parse(["--lr", "0.01", "--epochs", "5"]).lr_at(4) == 0.01
    with pytest.raises(HyperparameterError, match="lr_schedule must be constant or cosine"):
        parse(["--lr_schedule", "step"])
