"""A real (tiny) Snakemake run of the mammography workflow: synth -> train -> evaluate ->
score -> report, in a temporary directory."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
import yaml
from sklearn.metrics import roc_auc_score

REPO = Path(__file__).resolve().parents[1]

TRAIN_CONFIG = {
    "data": {"manifest": "unused.csv", "val_fraction": 0.34, "split_seed": 1},
    "input": {"height": 64, "width": 48},
    "model": {"channels": [4, 8, 8], "strides": [2, 2, 1], "hidden": [8]},
    "train": {
        "epochs": 2,
        "batch_size": 8,
        "seed": 0,
        "progress": False,
        "early_stopping": {"monitor": "val_auc", "mode": "max", "patience": 5},
    },
}


@pytest.mark.slow
def test_mammo_workflow_runs(tmp_path):
    (tmp_path / "train.yaml").write_text(yaml.safe_dump(TRAIN_CONFIG))
    config = {
        "results": "results",
        "tasks": ["mammo"],
        "biocnn": f"{sys.executable} -m biocnn",
        "mammo": {
            "config": str(tmp_path / "train.yaml"),
            "train_exams": 10,
            "heldout_exams": 3,
            "heldout_tomo": 1,
            "seed": 2,
        },
    }
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(config))
    target = "results/mammo/report/summary.json"
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "snakemake",
            "-s",
            str(REPO / "Snakefile"),
            "--directory",
            str(tmp_path),
            "--configfile",
            str(tmp_path / "tiny.yaml"),
            "--cores",
            "2",
            target,
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    results = tmp_path / "results" / "mammo"
    summary = json.loads((results / "report" / "summary.json").read_text())
    assert summary["image"]["n"] == 12
    check_reported_metrics(results)
    assert (results / "report" / "roc.png").is_file() and (results / "report" / "reliability.png").is_file()
    assert list((results / "report").glob("gradcam_*.png"))
    scored = json.loads((results / "score" / "summary.json").read_text())
    # 12 views scored; the two tomosynthesis volumes are listed with their reason (2D model).
    assert scored["scored"] == 12 and scored["failed"] == 2 and scored["files_seen"] == 14
    for log in ("synth_train", "synth_heldout", "train", "evaluate", "score", "report"):
        assert (tmp_path / "results" / "logs" / "mammo" / f"{log}.log").is_file()
    assert (results / "model" / "operating_point.json").is_file()
    # Nothing left to do on a second run.
    again = subprocess.run(
        [
            sys.executable,
            "-m",
            "snakemake",
            "-s",
            str(REPO / "Snakefile"),
            "--directory",
            str(tmp_path),
            "--configfile",
            str(tmp_path / "tiny.yaml"),
            "--cores",
            "2",
            "-n",
            target,
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert again.returncode == 0 and "Nothing to be done" in again.stdout + again.stderr


def _read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def check_reported_metrics(results: Path) -> None:
    """The report's metrics, recomputed here from the written per-image predictions (sklearn AUC,
    equal-width ECE, rates at the stored threshold), and the clinicians' scoring run giving the
    same probabilities as the evaluation."""
    summary = json.loads((results / "report" / "summary.json").read_text())
    rows = _read_csv(results / "evaluate" / "predictions.csv")
    y = np.array([int(r["label"]) for r in rows])
    p = np.array([float(r["probability"]) for r in rows])
    image = summary["image"]
    assert image["n"] == len(rows) and image["positives"] == y.sum()
    assert image["auc"] == pytest.approx(roc_auc_score(y, p), abs=1e-12)
    which = np.minimum((p * 10).astype(int), 9)
    ece = sum(abs(p[which == b].mean() - y[which == b].mean()) * (which == b).sum() for b in set(which)) / len(p)
    assert image["ece"] == pytest.approx(ece, abs=1e-9)
    threshold = json.loads((results / "model" / "operating_point.json").read_text())["threshold"]
    assert image["threshold"] == threshold
    assert image["sensitivity"] == pytest.approx((p[y == 1] >= threshold).mean())
    assert image["specificity"] == pytest.approx((p[y == 0] < threshold).mean())
    assert [int(r["flagged"]) for r in rows] == [int(v >= threshold) for v in p]
    # A breast scores the mean of its views, an exam the max of its breasts (aggregate: mean).
    breasts = defaultdict(list)
    for r, label, prob in zip(rows, y, p):
        breasts[r["study"], r["laterality"]].append((label, prob))
    breast = {k: (max(label for label, _ in v), np.mean([prob for _, prob in v])) for k, v in breasts.items()}
    exams = defaultdict(list)
    for (study, _), scored in breast.items():
        exams[study].append(scored)
    exam = [(max(label for label, _ in v), max(prob for _, prob in v)) for v in exams.values()]
    assert summary["breast_auc"] == pytest.approx(roc_auc_score(*zip(*breast.values())), abs=1e-12)
    assert summary["exam_auc"] == pytest.approx(roc_auc_score(*zip(*exam)), abs=1e-12)
    # Scoring the held-out folder gives each view the probability the evaluation gave it.
    scored = {r["file"]: float(r["probability"]) for r in _read_csv(results / "score" / "scores.csv")}
    evaluated = {r["path"].split("/dicom/", 1)[1]: prob for r, prob in zip(rows, p)}
    assert scored.keys() == evaluated.keys()
    assert all(abs(scored[f] - evaluated[f]) < 1e-6 for f in scored), (scored, evaluated)
