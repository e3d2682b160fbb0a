"""Hyper-parameter search: random search with k-fold cross-validation.

DeepBind calls this step "calibration", so the command-line verb keeps that name
(``biocnn deepbind calibrate``); here it is only ever the search, never probability calibration.

Each trial is one draw from :class:`~biocnn.deepbind.config.SearchSpace` (learning rate, weight
decay, dropout, initial weight scale, hidden layer on/off, number of motifs, max or max+avg
pooling), scored by the
mean validation ROC AUC over ``folds`` folds of the training data. Trials are independent, so
the workflow runs each one as its own job (``calibrate --trial i``) and a final step
(``calibrate --select``) picks the best; the chosen configuration is then retrained on all the
training data (``train --calibration best.json``) for the mean best epoch of its folds.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any

import numpy as np

from biocnn.deepbind.config import DeepBindConfig
from biocnn.deepbind.data import LabelledSequences, stratified_folds
from biocnn.deepbind.train import train_deepbind
from biocnn.errors import InputError
from biocnn.io.atomic import write_json

log = logging.getLogger(__name__)

TRIAL_FILE = "trial-{:03d}.json"
BEST_FILE = "best.json"


def _log_uniform(rng: np.random.Generator, low: float, high: float) -> float:
    return float(math.exp(rng.uniform(math.log(low), math.log(high))))


def sample_trials(cfg: DeepBindConfig) -> list[dict[str, Any]]:
    """The hyper-parameters of every trial, drawn from one seeded generator (so trial ``i``
    is the same whether it runs alone on a cluster node or in a local loop)."""
    space, cal = cfg.calibration.space, cfg.calibration
    rng = np.random.default_rng(cal.seed)
    trials = []
    for _ in range(cal.trials):
        trials.append(
            {
                "lr": _log_uniform(rng, *space.lr),
                "weight_decay": _log_uniform(rng, *space.weight_decay),
                "dropout": float(rng.choice(space.dropout)),
                "init_scale": _log_uniform(rng, *space.init_scale),
                "hidden": int(rng.choice(space.hidden)),
                "num_motifs": int(rng.choice(space.num_motifs)),
                "pool": str(rng.choice(space.pool)),
            }
        )
    # Trial 0 is the config's own settings, so calibration can never do worse than not calibrating.
    trials[0] = {
        "lr": cfg.train.lr,
        "weight_decay": cfg.train.weight_decay,
        "dropout": cfg.model.dropout,
        "init_scale": cfg.model.init_scale,
        "hidden": cfg.model.hidden,
        "num_motifs": cfg.model.num_motifs,
        "pool": cfg.model.pool,
    }
    return trials


def apply_params(cfg: DeepBindConfig, params: dict[str, Any]) -> DeepBindConfig:
    """A copy of ``cfg`` with a trial's hyper-parameters filled in."""
    keys = ("dropout", "init_scale", "hidden", "num_motifs", "pool")
    model = cfg.model.model_copy(update={k: params[k] for k in keys if k in params})
    train = cfg.train.model_copy(update={"lr": params["lr"], "weight_decay": params["weight_decay"]})
    return cfg.model_copy(update={"model": model, "train": train})


def run_trial(cfg: DeepBindConfig, index: int, data: LabelledSequences) -> dict[str, Any]:
    """Cross-validate trial ``index``: mean validation AUC and best epoch over the folds."""
    trials = sample_trials(cfg)
    if not 0 <= index < len(trials):
        raise InputError("calibration.trials", f"trial {index} does not exist (0..{len(trials) - 1})")
    params = trials[index]
    trial_cfg = apply_params(cfg, params)
    train_cfg = trial_cfg.train.model_copy(update={"epochs": cfg.calibration.epochs, "progress": False})
    folds = stratified_folds(data.labels, cfg.calibration.folds, cfg.calibration.seed)
    start = time.perf_counter()
    aucs, epochs = [], []
    for k, val_idx in enumerate(folds):
        train_idx = np.setdiff1d(np.arange(len(data)), val_idx)
        _, result = train_deepbind(data.subset(train_idx), data.subset(val_idx), trial_cfg.model, train_cfg)
        aucs.append(float(result.best_metrics.get("val_auc", float("nan"))))
        epochs.append(int(result.best_epoch))
        log.info("trial %d fold %d: val_auc %.4f at epoch %d", index, k, aucs[-1], epochs[-1])
    return {
        "trial": index,
        "params": params,
        "fold_aucs": aucs,
        "mean_auc": float(np.mean(aucs)),
        "best_epochs": epochs,
        "epochs": int(round(np.mean(epochs))),
        "folds": len(folds),
        "seconds": time.perf_counter() - start,
    }


def select_best(results: list[dict[str, Any]]) -> dict[str, Any]:
    """The trial with the highest mean validation AUC (ties: the lower trial index)."""
    if not results:
        raise ValueError("no calibration trials to select from")
    ranked = sorted(results, key=lambda r: (-(r["mean_auc"] if np.isfinite(r["mean_auc"]) else -1), r["trial"]))
    best = dict(ranked[0])
    best["ranking"] = [{"trial": r["trial"], "mean_auc": r["mean_auc"]} for r in ranked]
    return best


def read_trials(out_dir: str | Path, n_trials: int) -> list[dict[str, Any]]:
    """Every trial result in ``out_dir``; an error lists the missing ones."""
    import json

    out_dir = Path(out_dir)
    missing = [i for i in range(n_trials) if not (out_dir / TRIAL_FILE.format(i)).is_file()]
    if missing:
        raise InputError(out_dir, f"missing calibration trial results: {', '.join(map(str, missing))}")
    return [json.loads((out_dir / TRIAL_FILE.format(i)).read_text()) for i in range(n_trials)]


def write_trial(out_dir: str | Path, result: dict[str, Any]) -> Path:
    path = Path(out_dir) / TRIAL_FILE.format(result["trial"])
    write_json(path, result)
    return path


def calibrated_config(cfg: DeepBindConfig, best: dict[str, Any]) -> DeepBindConfig:
    """The config for the final model: the best trial's parameters, trained on all the data
    (no validation split) for the mean best epoch of its folds."""
    tuned = apply_params(cfg, best["params"])
    es = tuned.train.early_stopping.model_copy(update={"monitor": "train_loss", "mode": "min"})
    train = tuned.train.model_copy(update={"epochs": max(1, int(best["epochs"])), "early_stopping": es})
    data = tuned.data.model_copy(update={"val_fraction": 0.0})
    return tuned.model_copy(update={"train": train, "data": data})
