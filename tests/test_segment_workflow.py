"""A real (tiny) Snakemake run of the segmentation workflow, both kinds."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]

TINY = """
results: results
tasks: [segment]
train_gpus: 0
segment:
  kinds: [malaria, tumor]
  seed: 3
  mc_samples: 2
  malaria: {train_n: 4, test_n: 3, size: 48, tta: true, epochs: 1}
  tumor: {train_n: 3, test_n: 3, size: 20, epochs: 1}
"""


def test_segment_workflow_runs(tmp_path):
    (tmp_path / "tiny.yaml").write_text(TINY)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    snakemake = Path(sys.executable).with_name("snakemake")
    cmd = [
        str(snakemake),
        "-s",
        str(REPO / "Snakefile"),
        "--directory",
        str(tmp_path),
        "--configfile",
        str(tmp_path / "tiny.yaml"),
        "--cores",
        "2",
        "results/segment/report/summary.json",
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    res = tmp_path / "results" / "segment"
    summary = json.loads((res / "report" / "summary.json").read_text())
    assert set(summary) == {"malaria", "tumor"}
    for kind in ("malaria", "tumor"):
        assert (res / kind / "model" / "weights.safetensors").is_file()
        assert (res / "report" / f"{kind}_score_vs_error.png").is_file()
        assert (res / kind / "model" / "feature_stats.safetensors").is_file()
        header = (res / kind / "predict" / "uncertainty.csv").read_text().splitlines()[0]
        assert header.startswith("case,score,flag,structure_uncertainty,")
        check_report_matches_predictions(res, kind, n_cases=3)
    assert (res / "tumor" / "predict" / "case_000_label.nii.gz").is_file()
    assert (res / "malaria" / "predict" / "field_000_overlay.png").is_file()


def _dice(pred: np.ndarray, truth: np.ndarray, value: int) -> float:
    p, t = pred == value, truth == value
    total = p.sum() + t.sum()
    return 1.0 if total == 0 else 2.0 * (p & t).sum() / total


def _read(path: Path) -> np.ndarray:
    return np.asarray(nib.load(path).dataobj) if path.name.endswith(".nii.gz") else np.asarray(Image.open(path))


def check_report_matches_predictions(res: Path, kind: str, n_cases: int) -> None:
    """The report's Dice, recomputed here from the written label maps and the true labels, and
    its review list, the cases the prediction's CSV flags."""
    pred = res / kind / "predict"
    with open(pred / "uncertainty.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == n_cases
    summary = json.loads((res / "report" / "summary.json").read_text())[kind]
    assert summary["cases"] == n_cases
    assert summary["flagged_for_review"] == sorted(r["case"] for r in rows if r["flag"] == "yes")
    values = json.loads((pred / "predict.json").read_text())["label_values"]
    test = res / kind / "test"
    dice = []
    for r in rows:
        case = r["case"]
        if kind == "tumor":
            label, truth = pred / f"{case}_label.nii.gz", test / case / f"{case}_seg.nii.gz"
        else:
            label, truth = pred / f"{case}_label.png", test / "labels" / f"{case}.png"
        p, t = _read(label), _read(truth)
        assert p.shape == t.shape
        dice.append([_dice(p, t, v) for v in values[1:]])
    assert summary["dice"] == pytest.approx(np.mean(dice), abs=1e-6)
    per_class = dict(zip(map(str, values[1:]), np.mean(dice, 0)))
    assert summary["dice_per_class"] == pytest.approx(per_class, abs=1e-6)
    metrics = json.loads((res / kind / "evaluate" / "metrics.json").read_text())
    assert {c["case"]: c["score"] for c in metrics["per_case"]} == {r["case"]: float(r["score"]) for r in rows}
