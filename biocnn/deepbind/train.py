"""Training and scoring DeepBind models with the shared loop (:func:`biocnn.train.fit`)."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from biocnn.config import TrainConfig
from biocnn.deepbind.config import ModelSection
from biocnn.deepbind.data import LabelledSequences
from biocnn.deepbind.model import DeepBind
from biocnn.device import seed_everything
from biocnn.metrics import roc_auc
from biocnn.models import build_model
from biocnn.predict import batched, predict
from biocnn.train import FitResult, fit, gather_outputs


def model_spec(model: ModelSection) -> dict[str, Any]:
    """The ``config.json`` model entry that :func:`biocnn.models.build_model` rebuilds."""
    return {"name": "deepbind", **model.model_dump()}


def auc_metrics(labels: np.ndarray, scores: np.ndarray) -> dict[str, float]:
    """ROC AUC and PR AUC (average precision); NaN when only one class is present."""
    from sklearn.metrics import average_precision_score

    auc = roc_auc(labels, scores)
    pr = float("nan") if np.isnan(auc) else float(average_precision_score(np.asarray(labels), scores))
    return {"roc_auc": auc, "pr_auc": pr}


def make_validate(amp: bool):
    """The ``validate`` callback of :func:`fit`: validation ROC AUC, PR AUC and loss."""

    def validate(model: torch.nn.Module, loader: DataLoader, device: torch.device) -> dict[str, float]:
        s, y = gather_outputs(model, loader, device, amp=amp)
        m = auc_metrics(y.numpy(), s.numpy())
        return {
            "val_auc": m["roc_auc"],
            "val_pr_auc": m["pr_auc"],
            "val_loss": float(F.binary_cross_entropy_with_logits(s, y)),
        }

    return validate


class CpuBudgetReached(Exception):
    """Raised by :func:`cpu_budget_callback` to end training early."""


def cpu_budget_callback(budget_s: float, start: float | None = None):
    """A :func:`fit` callback that stops training before the next epoch would take the process
    past ``budget_s`` CPU seconds (all threads) since ``start`` (default: now)."""
    start = time.process_time() if start is None else start
    last = [time.process_time()]

    def check(epoch: int, row: dict) -> None:
        now = time.process_time()
        per_epoch, last[0] = now - last[0], now
        if now - start + per_epoch > budget_s:
            raise CpuBudgetReached(f"CPU budget {budget_s:.0f} s reached after epoch {epoch}")

    return check


def train_deepbind(
    train: LabelledSequences,
    val: LabelledSequences | None,
    model_cfg: ModelSection,
    train_cfg: TrainConfig,
    out_dir=None,
    extra_config: dict[str, Any] | None = None,
    resume: bool = False,
    callbacks=(),
) -> tuple[DeepBind, FitResult]:
    """Build a DeepBind model from ``model_cfg`` (seeded) and train it with the shared loop.

    ``out_dir=None`` trains in memory (calibration folds). Sequences of both sets are encoded
    at one common length (the longest), shorter ones filled with the neutral 0.25.
    """
    length = max(max(len(s) for s in train.seqs), max((len(s) for s in val.seqs), default=0) if val else 0)
    x, y = train.tensors(length)
    val_ds = TensorDataset(*val.tensors(length)) if val is not None else None
    seed_everything(train_cfg.seed)
    config = {"model": model_spec(model_cfg), **(extra_config or {})}
    model = build_model(config["model"])
    validate = make_validate(train_cfg.amp) if val is not None else None
    result = fit(
        model,
        TensorDataset(x, y),
        val_ds,
        loss_fn=F.binary_cross_entropy_with_logits,
        config=train_cfg,
        out_dir=out_dir,
        model_config=config,
        validate=validate,
        resume=resume,
        callbacks=callbacks,
    )
    return model, result


def evaluate_model(model: torch.nn.Module, data: LabelledSequences, batch_size: int = 512) -> dict[str, Any]:
    """Held-out metrics: ROC AUC, PR AUC, counts."""
    x, y = data.tensors()
    scores = predict(model, batched(x, batch_size)).numpy()
    return {
        **auc_metrics(y.numpy(), scores),
        "n": len(data),
        "n_positive": int((y == 1).sum()),
        "n_negative": int((y == 0).sum()),
        "test": data.source,
    }
