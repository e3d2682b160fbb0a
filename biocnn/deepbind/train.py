"""Training and scoring DeepBind models with the shared loop (:func:`biocnn.train.fit`)."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from biocnn.deepbind.config import ModelSection
from biocnn.deepbind.data import LabelledSequences
from biocnn.deepbind.model import DeepBind
from biocnn.config import TrainConfig
from biocnn.device import autocast, seed_everything, select_device
from biocnn.train import FitResult, fit, gather_outputs


def model_spec(model: ModelSection) -> dict[str, Any]:
    """The ``config.json`` model entry that :func:`biocnn.models.build_model` rebuilds."""
    return {"name": "deepbind", **model.model_dump()}


def auc_metrics(labels: np.ndarray, scores: np.ndarray) -> dict[str, float]:
    """ROC AUC and PR AUC (average precision); NaN when only one class is present."""
    from sklearn.metrics import average_precision_score, roc_auc_score

    labels = np.asarray(labels)
    if len(np.unique(labels)) < 2:
        return {"roc_auc": float("nan"), "pr_auc": float("nan")}
    return {"roc_auc": float(roc_auc_score(labels, scores)), "pr_auc": float(average_precision_score(labels, scores))}


def validate_auc(model: torch.nn.Module, loader: DataLoader, device: torch.device) -> dict[str, float]:
    """The ``validate`` callback of :func:`fit`: validation ROC AUC, PR AUC and loss."""
    s, y = gather_outputs(model, loader, device)
    m = auc_metrics(y.numpy(), s.numpy())
    return {"val_auc": m["roc_auc"], "val_pr_auc": m["pr_auc"],
            "val_loss": float(F.binary_cross_entropy_with_logits(s, y))}


@torch.no_grad()
def predict(model: torch.nn.Module, x: torch.Tensor, batch_size: int = 512, device: torch.device | None = None
            ) -> np.ndarray:
    """Scores (logits) of one-hot sequences ``x`` (n, 4, length), in batches."""
    device = device or next(model.parameters()).device
    model.eval()
    out = []
    for start in range(0, len(x), batch_size):
        with autocast(device):
            out.append(model(x[start:start + batch_size].to(device)).float().cpu())
    return torch.cat(out).numpy() if out else np.zeros(0, np.float32)


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


def train_deepbind(train: LabelledSequences, val: LabelledSequences | None, model_cfg: ModelSection,
                   train_cfg: TrainConfig, out_dir=None, extra_config: dict[str, Any] | None = None,
                   resume: bool = False, callbacks=()) -> tuple[DeepBind, FitResult]:
    """Build a DeepBind model from ``model_cfg`` (seeded) and train it with the shared loop.

    ``out_dir=None`` trains in memory (calibration folds). Sequences of both sets are encoded
    at one common length (the longest), shorter ones filled with the neutral 0.25.
    """
    length = max(max(len(s) for s in train.seqs), max((len(s) for s in val.seqs), default=0) if val else 0)
    x, y = train.tensors(length)
    val_ds = TensorDataset(*val.tensors(length)) if val is not None else None
    seed_everything(train_cfg.seed)
    model = DeepBind(**model_cfg.model_dump())
    config = {"model": model_spec(model_cfg), **(extra_config or {})}
    result = fit(model, TensorDataset(x, y), val_ds, loss_fn=F.binary_cross_entropy_with_logits, config=train_cfg,
                 out_dir=out_dir, model_config=config, validate=validate_auc if val is not None else None,
                 resume=resume, callbacks=callbacks)
    return model, result


def evaluate_model(model: torch.nn.Module, data: LabelledSequences, batch_size: int = 512) -> dict[str, Any]:
    """Held-out metrics: ROC AUC, PR AUC, counts."""
    x, y = data.tensors()
    scores = predict(model, x, batch_size)
    return {**auc_metrics(y.numpy(), scores), "n": len(data), "n_positive": int((y == 1).sum()),
            "n_negative": int((y == 0).sum()), "test": data.source}


def resolve_device(preference: str = "auto") -> torch.device:
    """The device inference runs on (same rule as training)."""
    return select_device(preference)
