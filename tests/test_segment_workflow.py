"""A real (tiny) Snakemake run of the segmentation workflow, both kinds."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

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
    cmd = [str(snakemake), "-s", str(REPO / "Snakefile"), "--directory", str(tmp_path), "--configfile",
           str(tmp_path / "tiny.yaml"), "--cores", "2", "results/segment/report/summary.json"]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    res = tmp_path / "results" / "segment"
    summary = json.loads((res / "report" / "summary.json").read_text())
    assert set(summary) == {"malaria", "tumor"}
    for kind in ("malaria", "tumor"):
        assert (res / kind / "model" / "weights.safetensors").is_file()
        assert (res / kind / "evaluate" / "metrics.json").is_file()
        assert (res / "report" / f"{kind}_score_vs_error.png").is_file()
        rows = (res / kind / "predict" / "uncertainty.csv").read_text().splitlines()
        assert len(rows) == 1 + 3
        assert rows[0].startswith("case,score,flag,structure_uncertainty,")
        assert (res / kind / "model" / "feature_stats.safetensors").is_file()
        assert isinstance(summary[kind]["flagged_for_review"], list)
    assert (res / "tumor" / "predict" / "case_000_label.nii.gz").is_file()
    assert (res / "malaria" / "predict" / "field_000_overlay.png").is_file()
