"""biocnn through its command line, as a user runs it: ``segment train`` with the shipped config,
``segment predict`` (Monte Carlo uncertainty and the review score) and ``segment evaluate``.

``segment train`` gets the peers' budget as ``--max-seconds``: the training loop stops before
the step that would pass it and keeps the best weights (a partial last epoch is validated).
What the command does around the loop is timed apart (:func:`timed_train`): ``setup_seconds``
(start-up, reading and caching the data) and ``post_train_seconds`` (calibration and review
statistics); the budget covers the loop only.
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


def timed_train(args: list[str], model: Path, log: Path) -> dict:
    """Run ``biocnn ARGS`` (a ``train`` verb writing ``model``) and split its wall clock with the
    loop's ``loop_seconds`` and ``loop_finished_at`` from ``metrics.json``: ``train_seconds``
    (the training loop), ``setup_seconds`` (before it), ``post_train_seconds`` (after it)."""
    shutil.rmtree(model, ignore_errors=True)
    launched = time.time()
    command = _biocnn(args, log)
    finished = time.time()
    metrics = json.loads((model / "metrics.json").read_text())
    loop_end, loop = metrics["loop_finished_at"], metrics["loop_seconds"]
    return {
        "train_seconds": loop,
        "setup_seconds": loop_end - loop - launched,
        "post_train_seconds": finished - loop_end,
        "command_seconds": command,
        "stopped": metrics["stopped"],
        "epochs": metrics["epochs_done"],
        "steps": metrics["steps_done"],
    }


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
    """Train with ``config`` for ``budget`` seconds of training loop (at most ``epochs``, default
    the config's), predict and evaluate ``test``.

    Returns the label maps (case id -> file), what was measured, and the model directory.
    """
    work.mkdir(parents=True, exist_ok=True)
    info: dict = {"config": str(config.relative_to(REPO) if config.is_relative_to(REPO) else config)}
    model = work / "model"
    args = ["segment", "train", "--config", str(config), "--train", train, "--out", str(model)]
    args += ["--max-seconds", str(budget)] + (["--epochs", str(epochs)] if epochs else [])
    info.update(timed_train(args, model, work / "train.log"))
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
