"""``biocnn segment train``: fit a U-Net with the shared loop (Dice + CE, validation Dice)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from biocnn.checkpoint import provenance
from biocnn.config import load_config
from biocnn.device import deterministic, is_main_process, seed_everything
from biocnn.errors import InputError
from biocnn.io.atomic import write_json
from biocnn.models import build_model
from biocnn.segment.config import SegmentConfig
from biocnn.segment.data import augmentation, cached_dataset, find_cases, preprocessing

log = logging.getLogger(__name__)


def plain(x) -> torch.Tensor:
    """A plain tensor (a MONAI ``MetaTensor`` sends every operation through its
    ``__torch_function__``, which costs more than a small U-Net's convolutions)."""
    return x.as_tensor() if hasattr(x, "as_tensor") else torch.as_tensor(x)


def model_spec(cfg: SegmentConfig) -> dict[str, Any]:
    """The ``{"name": "unet", ...}`` spec stored in config.json."""
    m = cfg.model
    return {
        "name": "unet",
        "spatial_dims": cfg.data.spatial_dims,
        "in_channels": cfg.data.in_channels,
        "out_channels": len(cfg.data.label_values),
        "channels": list(m.channels),
        "strides": list(m.strides) if m.strides else None,
        "kernel_size": m.kernel_size,
        "convs_per_stage": m.convs_per_stage,
        "norm": m.norm,
        "act": m.act,
        "dropout": m.dropout,
        "decoder_dropout": m.decoder_dropout,
    }


def split_cases(cfg: SegmentConfig):
    """Training and validation cases (a seeded split of ``data.train`` when no ``data.val``).

    A datalist's ``training`` list is read for ``data.train``, its ``validation`` list for ``data.val``.
    """
    d = cfg.data
    train = find_cases(d.train, d.spatial_dims, d.modalities, require_labels=True, datalist_key="training")
    if d.val:
        return train, find_cases(d.val, d.spatial_dims, d.modalities, require_labels=True, datalist_key="validation")
    if len(train) < 2:
        raise InputError(d.train, "need at least 2 labelled cases to split off validation (or set data.val)")
    order = np.random.default_rng(cfg.train.seed).permutation(len(train))
    n_val = max(1, int(round(len(train) * d.val_fraction)))
    return [train[i] for i in sorted(order[n_val:])], [train[i] for i in sorted(order[:n_val])]


def make_validate(cfg: SegmentConfig):
    """``validate(model, loader, device)``: mean foreground Dice of whole-image predictions.

    Validation images may differ in size, so the cases are taken one by one from the
    loader's dataset rather than batched.
    """
    from monai.metrics import DiceMetric
    from monai.metrics.utils import do_metric_reduction
    from monai.networks.utils import one_hot

    from biocnn.segment.inference import UncertaintyPredictor, sliding_stats

    inference = cfg.inference
    num_classes = len(cfg.data.label_values)

    def validate(model, loader, device) -> dict[str, float]:
        metric = DiceMetric(include_background=False, reduction="mean", ignore_empty=False)
        predictor = UncertaintyPredictor([model], cfg.data.spatial_dims, mc_samples=1, amp=cfg.train.amp)
        dice = []
        for item in loader.dataset:
            stats = sliding_stats(
                plain(item["image"]).to(device),
                predictor,
                inference.roi_size,
                inference.sw_batch_size,
                inference.overlap,
            )
            pred = stats[:-1].argmax(0)[None, None]
            label = plain(item["label"]).to(device)[None].long()
            dice.append(metric(one_hot(pred, num_classes), one_hot(label, num_classes)))
        # Reduced here, not by metric.aggregate(): under torchrun only rank 0 validates, and
        # aggregate() would wait for the other ranks' buffers.
        return {"val_dice": float(do_metric_reduction(torch.cat(dice), metric.reduction)[0].item())}

    return validate


def training_dataset(cfg: SegmentConfig, cases):
    """The training cases preprocessed once (cached) and augmented into patches on every access."""
    from monai.transforms import Compose

    pre = preprocessing(cfg.data, train=True)
    aug = augmentation(cfg.data, cfg.train.seed)
    return cached_dataset(
        cases,
        Compose([*pre.transforms, *aug.transforms]).set_random_state(seed=cfg.train.seed),
        cfg.data.cache_rate,
        copy_cache=False,  # the augmentation crops and copies, never writes into the cached images
    )


def train(
    config_path: str | Path, out_dir: str | Path, resume: bool = False, overrides: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Train a segmentation model described by ``config_path`` into ``out_dir``."""
    from monai.data import list_data_collate
    from monai.losses import DiceCELoss

    from biocnn.train import fit

    cfg = load_config(config_path, SegmentConfig, overrides)
    train_cases, val_cases = split_cases(cfg)
    log.info("training on %d cases, validating on %d", len(train_cases), len(val_cases))
    train_ds = training_dataset(cfg, train_cases)
    val_ds = cached_dataset(val_cases, preprocessing(cfg.data, train=True), cfg.data.cache_rate)
    data_files = [p for c in train_cases + val_cases for p in [*c.images, c.label] if p]
    model_config = {
        "model": model_spec(cfg),
        "data": cfg.data.model_dump(),
        "inference": cfg.inference.model_dump(),
        "train_cases": [c.id for c in train_cases],
        "val_cases": [c.id for c in val_cases],
        "provenance": provenance(cfg.train.seed, data_files, config_path),
    }
    # batch=True: Dice over the whole batch, stable for small structures and empty patches.
    loss = DiceCELoss(to_onehot_y=True, softmax=True, batch=True)
    # Deterministic kernels from the first weight to the last file written (fit alone restores
    # the caller's settings when it returns).
    with deterministic():
        seed_everything(cfg.train.seed)
        model = build_model(model_config["model"])
        result = fit(
            model,
            train_ds,
            val_ds,
            loss_fn=loss,
            config=cfg.train,
            out_dir=out_dir,
            model_config=model_config,
            validate=make_validate(cfg),
            resume=resume,
            collate_fn=list_data_collate,
        )
        if is_main_process():  # one writer under torchrun
            finish_model_dir(model, cfg, model_config, val_ds, train_cases + val_cases, out_dir)
    return {"best_epoch": result.best_epoch, **result.best_metrics}


def finish_model_dir(model, cfg: SegmentConfig, model_config: dict[str, Any], val_ds, cases, out_dir) -> None:
    """After ``fit``: calibrate, measure the review statistics, then write the model directory's
    ``feature_stats.safetensors`` and its final ``config.json`` once each.

    Everything is computed in memory first (the review statistics are measured with the
    calibrated softmax, as ``predict`` measures inputs); ``config.json`` (with the temperature)
    is built from ``model_config``, not read back from what ``fit`` wrote for its checkpoints,
    and written last, so a directory with a temperature in it is complete.
    """
    from biocnn.checkpoint import CONFIG, update_metrics
    from biocnn.segment.review import fit_review_stats

    temperature, calibration = calibrate_model(model, cfg, val_ds, out_dir)
    cfg = cfg.model_copy(update={"inference": cfg.inference.model_copy(update={"temperature": temperature})})
    stats = fit_review_stats(model, cfg, cases)
    if stats is not None:
        stats.save(out_dir)
    write_json(
        Path(out_dir) / CONFIG,
        {**model_config, "train": cfg.train.model_dump(), "inference": cfg.inference.model_dump()},
    )
    if calibration is not None:
        update_metrics(out_dir, {"calibration": calibration})


def calibrate_model(model, cfg: SegmentConfig, val_ds, out_dir: str | Path) -> tuple[float | None, dict | None]:
    """The temperature fitted on the validation cases and what it did (validation NLL and ECE
    before and after, for ``metrics.json``); ``inference.temperature`` as it is, and no report,
    when the config sets it."""
    from biocnn.segment.temperature import T_RANGE, calibrate, validation_logits

    inference = cfg.inference
    if inference.temperature is not None:
        return inference.temperature, None
    device = next(model.parameters()).device
    items = [val_ds[i] for i in range(len(val_ds))]
    logits, labels = validation_logits(
        model,
        [plain(it["image"]).to(device) for it in items],
        [plain(it["label"]) for it in items],
        inference.roi_size,
        inference.sw_batch_size,
        inference.overlap,
        seed=cfg.train.seed,
        device=device,
    )
    report = calibrate(logits, labels)
    if not T_RANGE[0] * 1.01 < report["temperature"] < T_RANGE[1] / 1.01:
        log.warning(
            "%s: calibration temperature %.3g at the end of its range: the validation predictions are "
            "mostly wrong or the validation labels trivial; check val_dice",
            out_dir,
            report["temperature"],
        )
    log.info(
        "temperature %.3f: validation NLL %.4f -> %.4f, ECE %.4f -> %.4f",
        report["temperature"],
        report["val_nll_before"],
        report["val_nll_after"],
        report["val_ece_before"],
        report["val_ece_after"],
    )
    return report["temperature"], report
