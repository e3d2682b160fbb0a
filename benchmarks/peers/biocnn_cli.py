"""biocnn through its command line, as a user runs it: ``segment train`` with the shipped config,
``segment predict`` (Monte Carlo uncertainty and the review score) and ``segment evaluate``.

``segment train`` has no wall-clock limit, only ``--epochs``. To give it the budget the peers
get, a one-epoch probe run measures the epoch time and the fixed cost of a training run
(reading and caching the data, calibration, the review statistics), and the real run gets the
epochs that fit: ``max(1, (budget - fixed) // epoch)``. The probe is timed apart
(``probe_seconds``); when one epoch is all that fits, the probe's model is the model.
"""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from biocnn.metrics import roc_auc
from biocnn.segment.evaluate import spearman
from biocnn.segment.predict import output_path

REPO = Path(__file__).resolve().parents[2]


def _biocnn(args: list[str], log: Path) -> float:
    """``python -m biocnn ARGS`` from the repository root, output in ``log``; returns its seconds."""
    start = time.perf_counter()
    with open(log, "w") as fh:
        done = subprocess.run([sys.executable, "-m", "biocnn", *args], cwd=REPO, stdout=fh, stderr=subprocess.STDOUT)
    if done.returncode:
        tail = log.read_text().strip().splitlines()[-3:]
        raise RuntimeError(f"biocnn {' '.join(args[:2])} failed (log {log}): {' | '.join(tail)}")
    return time.perf_counter() - start


def _train(config: Path, train: str, out: Path, epochs: int, log: Path) -> float:
    shutil.rmtree(out, ignore_errors=True)
    return _biocnn(
        ["segment", "train", "--config", str(config), "--train", train, "--out", str(out), "--epochs", str(epochs)],
        log,
    )


def fit_epochs(config: Path, train: str, work: Path, budget: float) -> tuple[int, dict]:
    """The epochs that fit ``budget``, from a one-epoch probe run in ``work/probe``."""
    seconds = _train(config, train, work / "probe", 1, work / "probe.log")
    rows = [json.loads(line) for line in (work / "probe" / "metrics.jsonl").read_text().splitlines()]
    epoch = sum(r["seconds"] for r in rows)
    fixed = seconds - epoch
    epochs = max(1, int((budget - fixed) // epoch))
    return epochs, {"probe_seconds": seconds, "epoch_seconds": epoch, "fixed_seconds": fixed}


def _review(pred: Path) -> dict[str, tuple[float, bool]]:
    with open(pred / "uncertainty.csv", newline="") as fh:
        return {r["case"]: (float(r["score"]), r["flag"] == "yes") for r in csv.DictReader(fh)}


def run(
    config: Path,
    train: str,
    test: str,
    work: Path,
    budget: float,
    label_name: str,
    epochs: int | None = None,
) -> tuple[dict[str, Path], dict, Path]:
    """Train with ``config`` for the budget (or ``epochs``), predict and evaluate ``test``.

    Returns the label maps (case id -> file), what was measured, and the model directory.
    """
    work.mkdir(parents=True, exist_ok=True)
    info: dict = {"config": str(config.relative_to(REPO) if config.is_relative_to(REPO) else config)}
    if epochs is None:
        epochs, probe = fit_epochs(config, train, work, budget)
        info.update(probe)
    model = work / "model"
    if epochs == 1 and "probe_seconds" in info:  # the probe trained exactly this model
        shutil.rmtree(model, ignore_errors=True)
        (work / "probe").rename(model)
        info["train_seconds"] = info["probe_seconds"]
    else:
        info["train_seconds"] = _train(config, train, model, epochs, work / "train.log")
    info["epochs"] = epochs
    pred = work / "pred"
    info["predict_seconds"] = _biocnn(
        ["segment", "predict", "--model", str(model), "--input", test, "--out", str(pred)], work / "predict.log"
    )
    _biocnn(
        ["segment", "evaluate", "--pred", str(pred), "--labels", test, "--out", str(work / "metrics.json")],
        work / "evaluate.log",
    )
    metrics = json.loads((work / "metrics.json").read_text())
    info["error_auroc"] = metrics["error_auroc"]
    info["review"] = _review(pred)
    predictions = {case: output_path(pred, case, label_name) for case in info["review"]}
    return predictions, info, model


def review_metrics(info: dict, dice: dict[str, float], model: Path, shifted: str | None, work: Path) -> dict:
    """Spearman (review score vs 1 - Dice), the share of test images flagged, and with
    ``shifted`` the AUROC of the review score for telling shifted images from test images."""
    review = info.pop("review")
    cases = sorted(review)
    scores = [review[c][0] for c in cases]
    out = {
        "spearman": spearman(scores, [1 - dice[c] for c in cases]),
        "id_flagged": float(np.mean([review[c][1] for c in cases])),
    }
    if shifted:
        pred = work / "pred_shifted"
        args = ["segment", "predict", "--model", str(model), "--input", shifted, "--out", str(pred)]
        _biocnn(args, work / "shifted.log")
        shifted_review = _review(pred)
        shifted_scores = [s for s, _ in shifted_review.values()]
        labels = np.r_[np.zeros(len(scores)), np.ones(len(shifted_scores))]
        out["ood_auroc"] = roc_auc(labels, np.r_[scores, shifted_scores])
        out["shifted_flagged"] = float(np.mean([f for _, f in shifted_review.values()]))
    return out
