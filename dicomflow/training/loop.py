"""The training loop shared by the three tasks: data, model, epochs, validation, checkpoints, artifact."""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import random
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.data import list_data_collate, worker_init_fn
from torch.utils.data import DataLoader, DistributedSampler

from dicomflow.dicom import volume
from dicomflow.modeling.artifact import METADATA_FILE, default_preprocess, save_artifact
from dicomflow.modeling.networks import build_network, network_spec
from dicomflow.modeling.preprocess import Preprocess, build_transform
from dicomflow.modeling.reference import input_profile, reference_ranges, structure_volumes
from dicomflow.training import checkpoints, curves, model_card
from dicomflow.training.data import Item, ManifestScan, make_dataset, scan_manifest, split_by_patient
from dicomflow.training.environment import TrainingEnvironment, init_distributed
from dicomflow.training.hyperparameters import Hyperparameters
from dicomflow.training.metrics import (
    format_metrics,
    multilabel_auroc,
    nanmean,
    overlap_metrics,
    segmentation_report,
)

log = logging.getLogger("dicomflow.training")
REPORT_FILE = "test_report.json"


def emit(values: dict[str, Any]) -> None:
    """Print one metric line (``name=value;`` pairs) for SageMaker's metric regexes."""
    print(format_metrics(values), flush=True)


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _slug(name: str) -> str:
    return "".join(c.lower() if c.isalnum() else "_" for c in name).strip("_")


class Trainer:
    """One training run of ``hp.task`` in the environment ``tenv``."""

    def __init__(self, hp: Hyperparameters, tenv: TrainingEnvironment):
        self.hp = hp
        self.tenv = tenv
        self.task = hp.task
        self.segmentation = hp.task == "segmentation3d"
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.use_amp = bool(hp.amp) and self.device.type == "cuda"
        self.distributed = False
        self.patches = hp.voxel_spacing is not None  # resampled volumes: train on patches, validate whole
        self.pre = build_transform(self._preprocess_spec())

    # -- setup ---------------------------------------------------------------------------------
    def _preprocess_spec(self) -> dict[str, Any]:
        size = [self.hp.image_size] * 2 if self.task == "classification2d" else self.hp.spatial_shape
        spec = default_preprocess(self.task, size)
        spec["intensity"] = ({"mode": "zscore"} if self.hp.intensity == "zscore" else
                             {"mode": "percentile", "lower": self.hp.intensity_lower, "upper": self.hp.intensity_upper})
        if self.patches:
            spec["spacing"] = self.hp.voxel_spacing
        return spec

    def _loader(self, items: list[Item], pre: Preprocess, shuffle: bool, cache_dir: Path) -> DataLoader:
        patches = shuffle and self.patches
        ds = make_dataset(items, pre, self.task, self.hp.cache, cache_dir, self.hp.num_workers,
                          patches=self.hp.patches_per_volume if patches else 0, seed=self.hp.seed + self.tenv.rank,
                          augment=shuffle and self.hp.augment == "light")
        # whole resampled volumes differ in size: one at a time
        batch_size = 1 if self.patches and not shuffle else self.hp.batch_size
        sampler = None
        if shuffle and self.distributed:
            sampler = DistributedSampler(ds, num_replicas=self.tenv.world_size, rank=self.tenv.rank,
                                         shuffle=True, seed=self.hp.seed)
        generator = torch.Generator().manual_seed(self.hp.seed)
        # a lone last sample breaks BatchNorm in training: drop the incomplete batch when there are others
        per_rank = len(ds) // (self.tenv.world_size if self.distributed else 1)
        return DataLoader(ds, batch_size=batch_size, drop_last=shuffle and per_rank > batch_size,
                          shuffle=shuffle and sampler is None, sampler=sampler, num_workers=self.hp.num_workers,
                          generator=generator, pin_memory=self.device.type == "cuda",
                          persistent_workers=self.hp.num_workers > 0,
                          collate_fn=list_data_collate if patches else None,
                          worker_init_fn=worker_init_fn if patches else None)  # a random state per worker

    # -- run -----------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        hp, tenv = self.hp, self.tenv
        started = time.perf_counter()
        _seed_everything(hp.seed)
        self.distributed = init_distributed(tenv, self.device.type == "cuda")
        if self.device.type == "cuda" and self.distributed:
            self.device = torch.device("cuda", tenv.rank % max(1, torch.cuda.device_count()))
        scan: ManifestScan = scan_manifest(tenv.channel(hp.channel), self.task)
        labels = (scan.classes if not self.segmentation
                  else [c for c in scan.classes if c.lower() != "background"])
        pre = self.pre
        net_spec = network_spec(self.task, labels)
        fingerprint = hashlib.sha256(json.dumps(
            [self.task, labels, net_spec, pre.spec, scan.manifest_sha256], sort_keys=True).encode()).hexdigest()
        fractions = [hp.val_fraction, hp.test_fraction] if self.segmentation else [hp.val_fraction]
        parts = split_by_patient(scan.items, fractions, hp.seed)
        train_items, val_items = parts[0], parts[1]
        test_items = parts[2] if self.segmentation else []
        if tenv.is_master:
            log.info("task %s: %d usable items (%d skipped), %d classes; split train %d / val %d%s",
                     self.task, len(scan.items), scan.skipped_total, len(labels), len(train_items),
                     len(val_items), f" / test {len(test_items)}" if self.segmentation else "")
            emit({"skipped_items": scan.skipped_total})
            for reason, count in sorted(scan.skipped.items()):
                log.warning("skipped %d manifest item(s): %s", count, reason.replace("_", " "))
        reference = self._reference(train_items, scan.structures) if tenv.is_master else None
        cache_dir = Path(tempfile.gettempdir()) / "dicomflow-cache"
        train_loader = self._loader(train_items, pre, True, cache_dir)
        val_loader = self._loader(val_items, pre, False, cache_dir) if val_items and tenv.is_master else None

        model = build_network(net_spec).to(self.device)
        if self.segmentation:
            from monai.losses import DiceCELoss

            loss_fn: torch.nn.Module = DiceCELoss(to_onehot_y=True, softmax=True)
        else:
            loss_fn = torch.nn.BCEWithLogitsLoss()
        optimizer = torch.optim.Adam(model.parameters(), lr=hp.lr)
        scaler = torch.amp.GradScaler("cuda", enabled=self.use_amp)

        ckpt_dir = tenv.checkpoint_dir
        start_epoch, best_metric, best_epoch, history = 1, -float("inf"), 0, []
        best_per_class: dict[str, float] = {}
        state = checkpoints.load_last(ckpt_dir, self.task, fingerprint)
        if state is not None:
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            start_epoch = int(state["epoch"]) + 1
            best_metric, best_epoch = float(state["best_metric"]), int(state["best_epoch"])
            history = list(state.get("history", []))
            if tenv.is_master:
                print(f"resumed from checkpoint: continuing at epoch {start_epoch} of {hp.epochs}", flush=True)
        net = model
        if self.distributed:
            from torch.nn.parallel import DistributedDataParallel

            net = DistributedDataParallel(
                model, device_ids=[self.device.index] if self.device.type == "cuda" else None)

        writer = None
        if tenv.is_master:
            from torch.utils.tensorboard import SummaryWriter

            writer = SummaryWriter(log_dir=str(tenv.output_data_dir / "tensorboard"), purge_step=start_epoch)

        for epoch in range(start_epoch, hp.epochs + 1):
            if isinstance(train_loader.sampler, DistributedSampler):
                train_loader.sampler.set_epoch(epoch)
            lr = hp.lr_at(epoch)
            for group in optimizer.param_groups:
                group["lr"] = lr
            train_loss, rate = self._train_epoch(net, train_loader, loss_fn, optimizer, scaler)
            values: dict[str, Any] = {"epoch": epoch, "train_loss": train_loss, "images_per_second": rate, "lr": lr}
            if tenv.is_master:
                per_class: dict[str, float] = {}
                validated = val_loader is not None and (epoch % hp.val_every == 0 or epoch == hp.epochs)
                if validated:
                    values_val, per_class = self._validate(model, val_loader, loss_fn, labels)
                    values.update(values_val)
                improved = False
                if validated or val_loader is None:  # with a validation split, only validated epochs compete
                    key = "val_mean_dice" if self.segmentation else "val_mean_auroc"
                    score = values.get(key, float("nan"))
                    if np.isnan(score):
                        score = -values.get("val_loss", train_loss)
                    improved = score > best_metric
                if improved:
                    best_metric, best_epoch, best_per_class = float(score), epoch, dict(per_class)
                values["best_metric"] = best_metric
                emit(values)
                if per_class:
                    print("per_class " + format_metrics({_slug(k): v for k, v in per_class.items()}), flush=True)
                history.append({**{k: float(v) for k, v in values.items()},
                                **{f"{curves.CLASS_PREFIX}{k}": float(v) for k, v in per_class.items()}})
                for name, value in {**values, **{f"class/{k}": v for k, v in per_class.items()}}.items():
                    if name != "epoch" and not np.isnan(float(value)):
                        writer.add_scalar(name, float(value), epoch)
                writer.flush()
                if improved or epoch % hp.checkpoint_every == 0 or epoch == hp.epochs:
                    checkpoints.save(ckpt_dir, {
                        "task": self.task, "fingerprint": fingerprint, "epoch": epoch,
                        "model": copy.deepcopy(model.state_dict()), "optimizer": optimizer.state_dict(),
                        "best_metric": best_metric, "best_epoch": best_epoch, "history": history,
                    }, best=improved)
            if self.distributed:
                import torch.distributed as dist

                dist.barrier()

        result: dict[str, Any] = {}
        if tenv.is_master:
            best = checkpoints.load_best(ckpt_dir)
            if best is not None:
                model.load_state_dict(best["model"])
            model.eval()
            final = {k: v for k, v in (history[-1] if history else {}).items()
                     if not k.startswith(curves.CLASS_PREFIX)}  # per-class values are the curves' and the card's
            report = None
            final.update({"best_metric": best_metric, "best_epoch": best_epoch,
                          "skipped_items": scan.skipped_total, "train_items": len(train_items),
                          "val_items": len(val_items)})
            if self.segmentation:
                report = self._test_report(model, pre, test_items or val_items, labels)
                report["split"] = "test" if test_items else "val"
                tenv.output_data_dir.mkdir(parents=True, exist_ok=True)
                text = json.dumps(report, indent=2) + "\n"
                (tenv.output_data_dir / REPORT_FILE).write_text(text)
                emit({"test_mean_dice": report["mean_dice"], "test_mean_jaccard": report["mean_jaccard"]})
                final.update({"test_mean_dice": report["mean_dice"], "test_mean_jaccard": report["mean_jaccard"]})
                tenv.model_dir.mkdir(parents=True, exist_ok=True)
                (tenv.model_dir / REPORT_FILE).write_text(text)
            extra: dict[str, Any] = {"hyperparameters": hp.to_dict(), "history": history, "reference": reference}
            if self.segmentation:
                extra.update({"structures": [s.to_dict() for s in scan.structures], "expected": _expected(report)})
            elif best_per_class:
                extra["expected"] = {"split": "validation", "images": len(val_items), "meanAuroc": best_metric,
                                     "classes": {k: {"auroc": v} for k, v in best_per_class.items()}}
            save_artifact(tenv.model_dir, task=self.task, labels=labels, network=model, network_spec=net_spec,
                          preprocess=pre.spec, metrics=final, manifest_sha256=scan.manifest_sha256, extra=extra)
            metadata = json.loads((tenv.model_dir / METADATA_FILE).read_text())
            model_card.write(tenv.model_dir, metadata, report, {
                "label_sources": model_card.label_sources([i.label for i in scan.items]),
                "device": f"{self.device.type} ({tenv.num_gpus} GPU)" if self.device.type == "cuda" else "CPU",
                "seconds": time.perf_counter() - started, "augmentation": self._augmentation_note()})
            writer.close()
            drawn = curves.write(tenv.output_data_dir, history, "val_mean_dice" if self.segmentation
                                 else "val_mean_auroc", best_epoch)
            print("training curves: " + ", ".join(str(p.relative_to(tenv.output_data_dir)) for p in drawn)
                  + " in the output data", flush=True)
            result = final
        if self.distributed:
            import torch.distributed as dist

            dist.barrier()
            dist.destroy_process_group()
        return result

    # -- steps ---------------------------------------------------------------------------------
    def _train_epoch(self, net: torch.nn.Module, loader: DataLoader, loss_fn: torch.nn.Module,
                     optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler) -> tuple[float, float]:
        net.train()
        total, count, started = 0.0, 0, time.perf_counter()
        for batch in loader:
            image = batch["image"].to(self.device, non_blocking=True)
            target = batch["target"].to(self.device, non_blocking=True)
            optimizer.zero_grad(set_to_none=True)
            with torch.autocast(device_type=self.device.type, enabled=self.use_amp):
                loss = loss_fn(net(image), target)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            total += float(loss.detach()) * image.shape[0]
            count += image.shape[0]
        elapsed = max(time.perf_counter() - started, 1e-9)
        return total / max(count, 1), count / elapsed

    @torch.no_grad()
    def _validate(self, model: torch.nn.Module, loader: DataLoader, loss_fn: torch.nn.Module,
                  labels: list[str]) -> tuple[dict[str, float], dict[str, float]]:
        model.eval()
        losses, scores, targets, dices = [], [], [], []
        for batch in loader:
            image = batch["image"].to(self.device)
            target = batch["target"].to(self.device)
            with torch.autocast(device_type=self.device.type, enabled=self.use_amp):
                logits = self.pre.run_network(model, image)
            losses.append(float(loss_fn(logits.float(), target)) * image.shape[0])
            if self.segmentation:
                pred = logits.argmax(dim=1).cpu().numpy()
                truth = target[:, 0].cpu().numpy()
                for p, t in zip(pred, truth, strict=True):
                    dices.append([m["dice"] for m in overlap_metrics(p, t, len(labels)).values()])
            else:
                scores.append(torch.sigmoid(logits.float()).cpu().numpy())
                targets.append(target.cpu().numpy())
        n = len(loader.dataset)
        values = {"val_loss": sum(losses) / max(n, 1)}
        if self.segmentation:
            per_class = {lab: nanmean([d[i] for d in dices]) for i, lab in enumerate(labels)}
            values["val_mean_dice"] = nanmean(list(per_class.values()))
        else:
            per_class = multilabel_auroc(np.concatenate(scores), np.concatenate(targets), labels)
            values["val_mean_auroc"] = nanmean(list(per_class.values()))
        return values, per_class

    @torch.no_grad()
    def _reference(self, items: list[Item], structures: list) -> dict[str, Any]:
        """The training inputs' ranges (spacing, field of view, intensities) and, for segmentation, the true
        structure volumes. A 2D task profiles the one image the model sees (the middle slice of a stack)."""
        profiles, volumes = [], []
        for item in items:
            array, geom = volume.load_files(item.images[:1] if self.task == "classification2d" else item.images)
            if self.task == "classification2d" and array.ndim == 3:
                array = array[array.shape[0] // 2]
            profiles.append(input_profile(array, geom.spacing[-array.ndim:]))
            if self.segmentation:
                label = volume.load_label_volume(item.label, geom)
                volumes.append(structure_volumes(label, geom.spacing, structures))
        return reference_ranges(profiles, volumes)

    def _augmentation_note(self) -> str:
        if self.segmentation:
            return ("none: the synthetic series vary in position, size and intensity already; left-right flips "
                    "are deliberately not used (they would swap laterality)")
        if self.hp.augment == "light":
            return ("light: random rotation up to 10 degrees, scaling up to 10 %, translation up to 8 %, "
                    "intensity scale and shift, Gaussian noise; never flipped (laterality)")
        return "none (augment=none)"

    def _test_report(self, model: torch.nn.Module, pre: Preprocess, items: list[Item], labels: list[str]
                     ) -> dict[str, Any]:
        """Dice/Jaccard/sensitivity/specificity on the original voxel grid of each held-out volume."""
        per_volume = {}
        for item in items:
            array, geom = volume.load_files(item.images)
            truth = volume.load_label_volume(item.label, geom)
            logits = pre.run_network(model, pre(array, geom.spacing)[None].to(self.device)).float()
            probs = torch.softmax(logits, dim=1)[0].cpu()
            pred = pre.label_map(probs, array.shape)
            per_volume[item.id] = overlap_metrics(pred, truth, len(labels))
        return segmentation_report(per_volume, labels)


def _expected(report: dict[str, Any] | None) -> dict[str, Any]:
    """What each structure's result is expected to be off by: its Dice and volume error on the test split."""
    if not report:
        return {}
    return {"split": report.get("split", "test"), "volumes": report.get("count", 0),
            "structures": {name: {"dice": m["dice"], "meanAbsVolumeErrorPct": m.get("mean_abs_volume_error_pct")}
                           for name, m in report.get("classes", {}).items()},
            "meanAbsTotalVolumeErrorPct": report.get("mean_abs_total_volume_error_pct")}


def train(hp: Hyperparameters, tenv: TrainingEnvironment) -> dict[str, Any]:
    """Run one training job; returns the final metrics on the master (empty dict on other ranks)."""
    return Trainer(hp, tenv).run()
