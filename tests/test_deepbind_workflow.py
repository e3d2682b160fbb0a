"""A real (tiny) Snakemake run of the DeepBind workflow on generated data."""

import json
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def test_deepbind_workflow_runs_end_to_end(tmp_path):
    train_cfg = yaml.safe_load((REPO / "configs" / "deepbind_demo.yaml").read_text())
    train_cfg["model"].update(num_motifs=4, motif_len=12, hidden=0)
    train_cfg["train"].update(epochs=3, batch_size=32)
    train_cfg["calibration"].update(trials=2, folds=2, epochs=1)
    train_cfg["calibration"]["space"].update(num_motifs=[4], hidden=[0])
    (tmp_path / "deepbind.yaml").write_text(yaml.safe_dump(train_cfg))
    config = {"results": "results", "tasks": ["deepbind"],
              "deepbind": {"config": str(tmp_path / "deepbind.yaml"), "seed": 1,
                           "demo": {"n_train": 150, "n_test": 40, "genome_bp": 20000},
                           "scan": {"window": 60, "stride": 30, "threshold": 0.0},
                           # A small JASPAR group keeps the Tomtom step quick (94 targets).
                           "motifs": {"tax_group": "urochordates"},
                           "experiments": {"CTCF": {"motif": "MA0139"}}}}
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(config))
    run = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--directory",
                          str(tmp_path), "--configfile", str(tmp_path / "tiny.yaml"), "--cores", "2"],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    out = tmp_path / "results" / "deepbind"
    trials = sorted((out / "CTCF" / "calibration").glob("trial-*.json"))
    assert len(trials) == 2  # one job per trial
    best = json.loads((out / "CTCF" / "calibration" / "best.json").read_text())
    assert best["trial"] in (0, 1)
    model_config = json.loads((out / "CTCF" / "model" / "config.json").read_text())
    assert model_config["calibration"]["trial"] == best["trial"]
    metrics = json.loads((out / "CTCF" / "metrics.json").read_text())
    assert 0 <= metrics["roc_auc"] <= 1 and metrics["n"] == 80
    assert (out / "CTCF" / "motifs" / "motifs.meme").read_text().startswith("MEME version 4")
    assert (out / "CTCF" / "scan.bedgraph").stat().st_size > 0
    assert len((out / "CTCF" / "variants.tsv").read_text().splitlines()) > 1
    summary = json.loads((out / "report" / "summary.json").read_text())
    assert "CTCF" in summary["experiments"]
    assert (out / "report" / "auc.png").is_file() and (out / "report" / "CTCF_scan.png").is_file()
    assert list((tmp_path / "results" / "logs" / "deepbind" / "CTCF").glob("*.log"))
