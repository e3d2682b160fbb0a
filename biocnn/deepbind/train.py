"""Training and scoring DeepBind models with the shared loop (:func:`biocnn.train.fit`)."""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from biocnn.checkpoint import save_model
from biocnn.config import TrainConfig
from biocnn.deepbind.config import ModelSection
from biocnn.deepbind.data import LabelledSequences
from biocnn.deepbind.model import DeepBind, merge
from biocnn.device import seed_everything
from biocnn.metrics import roc_auc
from biocnn.models import build_model
from biocnn.predict import batched, predict
from biocnn.train import FitResult, fit, gather_outputs

log = logging.getLogger(__name__)


def model_spec(model: ModelSection) -> dict[str, Any]:
    """The ``config.json`` model entry that :func:`biocnn.models.build_model` rebuilds (one member)."""
    return {"name": "deepbind", **model.model_dump(exclude={"ensemble"})}


def merged_spec(model: DeepBind) -> dict[str, Any]:
    """The ``config.json`` model entry of a merged ensemble (its stacked sizes, no dropout)."""
    linears = [layer for layer in model.head.mlp if isinstance(layer, torch.nn.Linear)]
    return {
        "name": "deepbind",
        "num_motifs": model.num_motifs,
        "motif_len": model.motif_len,
        "pool": model.head.pool,
        "hidden": linears[0].out_features if len(linears) == 2 else 0,
        "dropout": 0.0,
        "init_scale": None,
        "both_strands": model.both_strands,
    }


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


def cpu_budget_callback(budget_s: float, start: float | None = None):
    """A :func:`fit` callback that ends training (reason ``"cpu_budget"``) before the next epoch
    would take the process past ``budget_s`` CPU seconds (all threads) since ``start`` (default:
    now); :func:`fit` then keeps the best epoch so far, as for early stopping."""
    start = time.process_time() if start is None else start
    last = [time.process_time()]

    def check(epoch: int, row: dict) -> str | None:
        now = time.process_time()
        per_epoch, last[0] = now - last[0], now
        if now - start + per_epoch > budget_s:
            log.info("CPU budget %.0f s reached after epoch %d", budget_s, epoch)
            return "cpu_budget"
        return None

    return check


def _fit_one(train, val, train_cfg, out_dir, config, resume, callbacks, cpu_budget_s):
    """One model through :func:`fit`; with ``cpu_budget_s`` it stops before an epoch that would
    pass the budget and keeps its best epoch so far."""
    length = max(max(len(s) for s in train.seqs), max((len(s) for s in val.seqs), default=0) if val else 0)
    x, y = train.tensors(length)
    val_ds = TensorDataset(*val.tensors(length)) if val is not None else None
    seed_everything(train_cfg.seed)
    model = build_model(config["model"])
    if cpu_budget_s is not None:
        callbacks = [*callbacks, cpu_budget_callback(cpu_budget_s)]
    result = fit(
        model,
        TensorDataset(x, y),
        val_ds,
        loss_fn=F.binary_cross_entropy_with_logits,
        config=train_cfg,
        out_dir=out_dir,
        model_config=config,
        validate=make_validate(train_cfg.amp) if val is not None else None,
        resume=resume,
        callbacks=callbacks,
    )
    return model.eval(), result


def train_deepbind(
    train: LabelledSequences,
    val: LabelledSequences | None,
    model_cfg: ModelSection,
    train_cfg: TrainConfig,
    out_dir=None,
    extra_config: dict[str, Any] | None = None,
    resume: bool = False,
    callbacks=(),
    cpu_budget_s: float | None = None,
) -> tuple[DeepBind, FitResult]:
    """Build a DeepBind model from ``model_cfg`` (seeded) and train it with the shared loop.

    ``out_dir=None`` trains in memory (calibration folds). Sequences of both sets are encoded
    at one common length (the longest), shorter ones filled with the neutral 0.25.
    ``model_cfg.ensemble`` > 1 trains up to that many members (seeds ``seed``, ``seed + 1``, ...)
    and returns them merged into one model (:func:`~biocnn.deepbind.model.merge`; members train
    in memory, so ``resume`` restarts them). ``cpu_budget_s``: CPU seconds (process time, all
    threads) for everything; a model stops before an epoch that would pass it and keeps its best
    epoch so far, and a further member starts only if the members' mean cost still fits.
    """
    config = {"model": model_spec(model_cfg), **(extra_config or {})}
    if model_cfg.ensemble == 1:
        return _fit_one(train, val, train_cfg, out_dir, config, resume, callbacks, cpu_budget_s)
    start = time.process_time()
    members, history, results = [], [], []
    member_config = {"model": model_spec(model_cfg.model_copy(update={"ensemble": 1}))}
    for i in range(model_cfg.ensemble):
        share = None
        if cpu_budget_s is not None:
            share = cpu_budget_s - (time.process_time() - start)
            if members and share < (time.process_time() - start) / len(members):
                break  # another member would not fit: the ensemble is what the budget allows
        cfg_i = train_cfg.model_copy(update={"seed": train_cfg.seed + i})
        model, result = _fit_one(train, val, cfg_i, None, member_config, False, callbacks, share)
        members.append(model)
        results.append(result)
        history += [{"member": i, **row} for row in result.history]
    merged = merge(members)
    metrics: dict[str, Any] = {f"member_{i}_val_auc": r.best_metrics.get("val_auc") for i, r in enumerate(results)}
    if val is not None:
        m = evaluate_model(merged, val)
        metrics.update({"val_auc": m["roc_auc"], "val_pr_auc": m["pr_auc"]})
    best_epoch = max(r.best_epoch for r in results)
    if out_dir is not None:
        save_model(out_dir, merged, {**config, "model": merged_spec(merged)}, {"best_epoch": best_epoch, **metrics})
    return merged, FitResult(best_epoch, metrics, history, any(r.stopped != "epochs" for r in results))


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
