"""A real (tiny) Snakemake run of the mammography workflow: synth -> train -> evaluate ->
score -> report, in a temporary directory."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]

TRAIN_CONFIG = {
    "data": {"manifest": "unused.csv", "val_fraction": 0.34, "split_seed": 1},
    "input": {"height": 64, "width": 48},
    "model": {"channels": [4, 8, 8], "strides": [2, 2, 1], "hidden": [8]},
    "train": {"epochs": 2, "batch_size": 8, "seed": 0, "progress": False,
              "early_stopping": {"monitor": "val_auc", "mode": "max", "patience": 5}},
}


@pytest.mark.slow
def test_mammo_workflow_runs(tmp_path):
    (tmp_path / "train.yaml").write_text(yaml.safe_dump(TRAIN_CONFIG))
    config = {"results": "results", "tasks": ["mammo"], "biocnn": f"{sys.executable} -m biocnn",
              "mammo": {"config": str(tmp_path / "train.yaml"), "train_exams": 10, "heldout_exams": 3,
                        "heldout_tomo": 1, "seed": 2}}
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(config))
    target = "results/mammo/report/summary.json"
    run = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--directory",
                          str(tmp_path), "--configfile", str(tmp_path / "tiny.yaml"), "--cores", "2", target],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    results = tmp_path / "results" / "mammo"
    summary = json.loads((results / "report" / "summary.json").read_text())
    assert summary["image"]["n"] == 12 and 0 <= summary["image"]["auc"] <= 1
    assert (results / "report" / "roc.png").is_file() and (results / "report" / "reliability.png").is_file()
    assert list((results / "report").glob("gradcam_*.png"))
    scored = json.loads((results / "score" / "summary.json").read_text())
    # 12 views scored; the two tomosynthesis volumes are listed with their reason (2D model).
    assert scored["scored"] == 12 and scored["failed"] == 2 and scored["files_seen"] == 14
    for log in ("synth_train", "synth_heldout", "train", "evaluate", "score", "report"):
        assert (tmp_path / "results" / "logs" / "mammo" / f"{log}.log").is_file()
    assert (results / "model" / "operating_point.json").is_file()
    # Nothing left to do on a second run.
    again = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--directory",
                            str(tmp_path), "--configfile", str(tmp_path / "tiny.yaml"), "--cores", "2", "-n",
                            target], capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "Nothing to be done" in again.stdout + again.stderr
