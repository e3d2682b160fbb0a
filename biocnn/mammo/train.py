"""``biocnn mammo train``: manifest -> patient-level split -> view classifier -> operating point.

``method: image`` trains the whole-image classifier on augmented views; ``method: patch`` trains
the patch model (:mod:`biocnn.mammo.heatmap`) on patches drawn from the training views' lesion
circles and normal tissue (:mod:`biocnn.mammo.patches`). Both are validated, calibrated and
thresholded on whole validation views.

The model directory gets, besides the shared loop's files (``weights.safetensors``,
``config.json``, ``metrics.json``, ``metrics.jsonl``, ``state/``):

* ``split.csv``: every manifest row with its split (patients never span two splits);
* ``operating_point.json``: the Platt calibration of the probabilities and the threshold that
  reaches ``target_sensitivity`` on the (calibrated) validation images, both fitted on the
  validation images and used by ``evaluate`` and ``score``.
"""

from __future__ import annotations

import csv
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from biocnn.checkpoint import provenance, read_json, update_metrics
from biocnn.config import load_config
from biocnn.device import deterministic, is_main_process, seed_everything
from biocnn.errors import CheckpointError, ConfigError, InputError
from biocnn.io.atomic import atomic_open, write_json
from biocnn.mammo import metrics as M
from biocnn.mammo.config import MammoConfig
from biocnn.mammo.data import CachedDataset, Decoded, Record, augmentation, decode_all, patient_split, read_manifest
from biocnn.mammo.patches import PatchDataset
from biocnn.mammo.platt import calibrated_probs, fit_platt
from biocnn.metrics import expected_calibration_error, roc_auc
from biocnn.models import build_model
from biocnn.predict import batched, predict
from biocnn.train import fit, gather_outputs

log = logging.getLogger(__name__)
OPERATING_POINT = "operating_point.json"


def model_spec(cfg: MammoConfig) -> dict[str, Any]:
    """The registry spec of the view classifier (``config.json["model"]``)."""
    m = cfg.model
    if cfg.method == "patch":
        return {
            "name": "patch_classifier",
            "spatial_dims": m.spatial_dims,
            "in_channels": 1,
            "channels": list(m.channels),
            "strides": list(m.strides) if m.strides else None,
            "kernel_size": m.kernel_size,
            "convs_per_stage": m.convs_per_stage,
            "norm": m.norm,
            "dropout": m.dropout,
            "hidden": list(m.hidden),
            "head_dropout": m.head_dropout,
            "patch_size": cfg.patch.size,
            "top_k": cfg.patch.top_k,
        }
    return {
        "name": "classifier",
        "spatial_dims": m.spatial_dims,
        "in_channels": 1,
        "num_outputs": 1,
        "channels": list(m.channels),
        "strides": list(m.strides) if m.strides else None,
        "kernel_size": m.kernel_size,
        "convs_per_stage": m.convs_per_stage,
        "norm": m.norm,
        "dropout": m.dropout,
        "hidden": list(m.hidden),
        "head_dropout": m.head_dropout,
        "pool": m.pool,
    }


def predict_logits(
    model: nn.Module, images: torch.Tensor | list, device: torch.device, batch_size: int = 32
) -> np.ndarray:
    """Malignancy logits of preprocessed images (``(n, 1, *spatial)`` or a list of ``(*spatial)`` arrays)."""
    batches = batched(images, batch_size)
    if not torch.is_tensor(images):
        batches = (x[:, None] for x in batches)  # the channel axis
    return predict(model, batches, device).reshape(-1).numpy()


def make_validate(amp: bool):
    """``validate(model, loader, device)``: validation AUC (monitored; 0.5 when one class) and loss."""

    def validate(model: nn.Module, loader, device: torch.device) -> dict[str, float]:
        z, y = gather_outputs(model, loader, device, amp=amp)
        loss = nn.functional.binary_cross_entropy_with_logits(z, y).item()
        value = roc_auc(y.numpy(), torch.sigmoid(z).numpy())
        return {"val_auc": 0.5 if np.isnan(value) else value, "val_loss": loss}

    return validate


def _decode_records(records: list[Record], cfg: MammoConfig) -> list[Decoded]:
    """Decode every manifest image; a training set with unreadable files is an error."""
    decoded = decode_all(
        [r.path for r in records],
        (cfg.input.height, cfg.input.width),
        cfg.input.depth,
        cfg.model.spatial_dims,
        workers=cfg.data.workers,
        desc="decoding training images",
    )
    failed = [(records[d.index].path, d.reason) for d in decoded if d.image is None]
    if failed:
        listing = "; ".join(f"{p}: {why}" for p, why in failed[:5])
        raise InputError(
            cfg.data.manifest, f"{len(failed)} image(s) cannot be used: {listing}{' ...' if len(failed) > 5 else ''}"
        )
    return decoded


def lesion_in_model_grid(record: Record, decoded: Decoded) -> np.ndarray | None:
    """The record's lesion mask carried into the model input's grid (``None`` without one)."""
    if record.mask is None:
        return None
    from biocnn.synthetic.mammo import read_mask

    try:
        mask = read_mask(record.mask)
    except (OSError, ValueError) as exc:
        raise InputError(record.mask, f"cannot read the lesion mask ({exc})") from None
    if mask.shape != tuple(decoded.geometry.source_shape):
        raise InputError(
            record.mask,
            f"lesion mask is {mask.shape[1]}x{mask.shape[0]}, its image {record.path} is "
            f"{decoded.geometry.source_shape[1]}x{decoded.geometry.source_shape[0]}",
        )
    return decoded.geometry.apply(mask.astype(np.float32)) > 0.5


def patch_dataset(cfg: MammoConfig, records: list[Record], decoded: list[Decoded]) -> PatchDataset:
    """The training patches of ``method: patch`` from the training views and their circles."""
    p = cfg.patch
    lesions = [lesion_in_model_grid(r, d) for r, d in zip(records, decoded)]
    positive = [
        les is not None and les.any() and (p.positives == "finding" or r.label == 1) for r, les in zip(records, lesions)
    ]
    if not any(positive):
        raise InputError(
            cfg.data.manifest,
            f"patch.positives is {p.positives!r} but no training view with "
            f"{'a finding' if p.positives == 'finding' else 'label 1'} has a lesion mask in the 'mask' column",
        )
    # A label-1 view without a circle has its finding somewhere unknown: no negatives from it.
    negative = [r.label == 0 or (les is not None and les.any()) for r, les in zip(records, lesions)]
    return PatchDataset(
        [d.image for d in decoded],
        lesions,
        positive,
        patch_size=p.size,
        negative=negative,
        per_epoch=p.per_epoch,
        positive_fraction=p.positive_fraction,
        negative_margin=p.negative_margin,
        shift=p.shift,
        scale=p.scale,
        gamma=p.gamma,
    )


def _write_split(path: Path, records: list[Record], assignment: dict[str, str]) -> None:
    with atomic_open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["path", "patient_id", "study_id", "laterality", "view", "label", "split"])
        for r in records:
            writer.writerow(
                [str(r.path), r.patient_id, r.study_id, r.laterality, r.view, r.label, assignment[r.patient_id]]
            )


def _check_patch_geometry(cfg: MammoConfig, config_path: str | Path) -> None:
    """``method: patch`` needs 2D views, a patch side that is a multiple of the backbone's total
    stride, and a patch that fits the input."""
    if cfg.method != "patch":
        return
    strides = cfg.model.strides or [1] + [2] * (len(cfg.model.channels) - 1)
    stride = int(np.prod(strides))
    problems = []
    if cfg.model.spatial_dims != 2:
        problems.append("model.spatial_dims: the patch model scores 2D views")
    if cfg.patch.size % stride:
        problems.append(f"patch.size: {cfg.patch.size} is not a multiple of the backbone's stride {stride}")
    if cfg.patch.size > min(cfg.input.height, cfg.input.width):
        problems.append(f"patch.size: {cfg.patch.size} is larger than the input {cfg.input.height}x{cfg.input.width}")
    if problems:
        raise ConfigError("; ".join(f"{config_path}: {p}" for p in problems))


def train(
    config_path: str | Path, out_dir: str | Path, resume: bool = False, overrides: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Train the view classifier described by the YAML config; returns the final metrics."""
    cfg = load_config(config_path, MammoConfig, overrides)
    _check_patch_geometry(cfg, config_path)
    out_dir = Path(out_dir)
    records = read_manifest(cfg.data.manifest, cfg.data.label_column)
    assignment = patient_split(records, cfg.data.val_fraction, cfg.data.test_fraction, cfg.data.split_seed)
    parts = {
        name: [i for i, r in enumerate(records) if assignment[r.patient_id] == name]
        for name in ("train", "val", "test")
    }
    for name in ("train", "val"):
        labels = {records[i].label for i in parts[name]}
        if labels != {0, 1}:
            raise InputError(
                cfg.data.manifest,
                f"the {name} split needs malignant and normal images, "
                f"got labels {sorted(labels)}; add data or change val_fraction",
            )
    decoded = _decode_records(records, cfg)
    images = [d.image for d in decoded]
    out_dir.mkdir(parents=True, exist_ok=True)
    if is_main_process():  # one writer under torchrun
        _write_split(out_dir / "split.csv", records, assignment)

    def subset(name: str, transform=None) -> CachedDataset:
        return CachedDataset([images[i] for i in parts[name]], [records[i].label for i in parts[name]], transform)

    a = cfg.augment
    transform = augmentation(a.rotate, a.scale, a.translate, a.flip, a.gamma, a.noise) if a.enabled else None
    train_ds, val_ds = subset("train", transform), subset("val")
    if cfg.method == "patch":  # patches from the training views; validation on whole views
        train_ds = patch_dataset(cfg, [records[i] for i in parts["train"]], [decoded[i] for i in parts["train"]])
    y_train = np.array([records[i].label for i in parts["train"]])
    n_pos, n_neg = float(y_train.sum()), float(len(y_train) - y_train.sum())
    # Patches are balanced by construction (patch.positive_fraction).
    pos_weight = (
        torch.tensor(n_neg / max(n_pos, 1.0)) if cfg.balance == "pos_weight" and cfg.method == "image" else None
    )
    sample_weights = None
    if cfg.balance == "sampler" and cfg.method == "image":
        sample_weights = np.where(y_train > 0, 0.5 / max(n_pos, 1), 0.5 / max(n_neg, 1)).tolist()

    def loss_fn(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        weight = pos_weight.to(logits.device) if pos_weight is not None else None
        return nn.functional.binary_cross_entropy_with_logits(logits.float(), targets, pos_weight=weight)

    model_config = {
        "model": model_spec(cfg),
        "input": cfg.input.model_dump(),
        "aggregate": cfg.aggregate,
        "target_sensitivity": cfg.target_sensitivity,
        "balance": cfg.balance,
        "augment": cfg.augment.model_dump(),
        "method": cfg.method,
        **({"patch": cfg.patch.model_dump()} if cfg.method == "patch" else {}),
        "data": cfg.data.model_dump(),
        "provenance": provenance(cfg.train.seed, [cfg.data.manifest], config_path),
    }
    # Deterministic kernels from the first weight to the last file written (fit alone restores
    # the caller's settings when it returns).
    with deterministic():
        seed_everything(cfg.train.seed)
        model = build_model(model_config["model"])
        result = fit(
            model,
            train_ds,
            val_ds,
            loss_fn=loss_fn,
            config=cfg.train,
            out_dir=out_dir,
            model_config=model_config,
            validate=make_validate(cfg.train.amp),
            resume=resume,
            sample_weights=sample_weights,
        )
        if not is_main_process():  # one writer under torchrun
            return {"best_epoch": result.best_epoch, **result.best_metrics}
        metrics = _fit_operating_point(model, cfg, images, records, parts, out_dir)
    return update_metrics(out_dir, {"best_epoch": result.best_epoch, **metrics})


def _fit_operating_point(
    model: nn.Module,
    cfg: MammoConfig,
    images: list[np.ndarray],
    records: list[Record],
    parts: dict[str, list[int]],
    out_dir: Path,
) -> dict[str, Any]:
    """Platt calibration and the operating point, fitted on the validation images (never on
    test) and written to ``operating_point.json``; returns the validation (and test) metrics."""
    device = next(model.parameters()).device
    val_logits = predict_logits(model, [images[i] for i in parts["val"]], device, cfg.train.batch_size)
    val_labels = [records[i].label for i in parts["val"]]
    calibration = fit_platt(val_logits, val_labels)
    val_probs = calibrated_probs(val_logits, calibration)
    threshold = M.threshold_for_sensitivity(val_labels, val_probs, cfg.target_sensitivity)
    rates = M.rates_at(val_labels, val_probs, threshold)
    write_json(
        out_dir / OPERATING_POINT,
        {
            "threshold": threshold,
            "target_sensitivity": cfg.target_sensitivity,
            "chosen_on": "validation",
            "val_sensitivity": rates["sensitivity"],
            "val_specificity": rates["specificity"],
            "val_images": len(val_labels),
            "aggregate": cfg.aggregate,
            "calibration": calibration,
        },
    )
    ece_uncalibrated = expected_calibration_error(val_labels, calibrated_probs(val_logits, None), M.ECE_BINS)
    metrics = {
        "val_auc": roc_auc(val_labels, val_probs),
        "val_ece_uncalibrated": ece_uncalibrated,
        "val_ece": expected_calibration_error(val_labels, val_probs, M.ECE_BINS),
        "threshold": threshold,
        "train_images": len(parts["train"]),
        "val_images": len(parts["val"]),
        "test_images": len(parts["test"]),
    }
    if parts["test"]:
        test_logits = predict_logits(model, [images[i] for i in parts["test"]], device, cfg.train.batch_size)
        test_probs = calibrated_probs(test_logits, calibration)
        test = M.summary(
            [records[i].label for i in parts["test"]],
            test_probs,
            threshold,
            [records[i].patient_id for i in parts["test"]],
            n_boot=500,
        )
        metrics.update({f"test_{k}": v for k, v in test.items()})
    return metrics


def read_operating_point(model_dir: str | Path) -> dict[str, Any]:
    """The operating point stored by :func:`train`, checked: a threshold in ``[0, 1]`` and, when
    present, a calibration with a finite numeric slope and intercept."""
    path = Path(model_dir) / OPERATING_POINT
    if not path.is_file():
        raise CheckpointError(f"{path}: not found; this model directory was not made by 'biocnn mammo train'")
    try:
        op = read_json(path)
    except (OSError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path}: cannot read ({exc})") from None

    def number(value: Any, what: str) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise CheckpointError(f"{path}: {what} must be a finite number, got {value!r}")
        return float(value)

    if "threshold" not in op:
        raise CheckpointError(f"{path}: no 'threshold'")
    if not 0.0 <= number(op["threshold"], "threshold") <= 1.0:
        raise CheckpointError(f"{path}: threshold must be between 0 and 1, got {op['threshold']!r}")
    calibration = op.get("calibration")
    if calibration is not None:
        if not isinstance(calibration, dict):
            raise CheckpointError(f"{path}: calibration must be an object with slope and intercept")
        for key in ("slope", "intercept"):
            if key not in calibration:
                raise CheckpointError(f"{path}: calibration has no {key!r}")
            number(calibration[key], f"calibration.{key}")
    return op
