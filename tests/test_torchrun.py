"""Multi-GPU training from the workflow: with `train_gpus: 2` a training rule runs under
torchrun with two processes (DistributedDataParallel; gloo on CPU) and writes one valid model."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from test_segment_workflow import TINY as SEGMENT_TINY

REPO = Path(__file__).resolve().parents[1]
MODEL = "results/segment/malaria/model"


@pytest.mark.slow
def test_training_rule_runs_under_torchrun_with_two_processes(tmp_path):
    config = yaml.safe_load(SEGMENT_TINY)
    config["segment"]["kinds"] = ["malaria"]
    config.update(
        train_gpus=2, biocnn=f"{sys.executable} -m biocnn", torchrun=f"{sys.executable} -m torch.distributed.run"
    )
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(config))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
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
            "--printshellcmds",
            f"{MODEL}/weights.safetensors",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "torch.distributed.run --standalone --nproc_per_node 2" in run.stdout + run.stderr
    log = (tmp_path / "results" / "logs" / "segment" / "train_malaria.log").read_text()
    # Both ranks started and read the data; only rank 0 wrote the model.
    ranks = {int(r) for r in re.findall(r"^\[default(\d+)\]:.*training on \d+ cases", log, re.M)}
    assert ranks == {0, 1}, log[-3000:]
    assert not re.search(r"^\[default1\]:.*temperature", log, re.M), log[-3000:]
    model = tmp_path / MODEL
    metrics = json.loads((model / "metrics.json").read_text())
    assert metrics["epoch"] == metrics["best_epoch"] == 1 and 0 <= metrics["val_dice"] <= 1
    assert json.loads((model / "config.json").read_text())["model"]
    from biocnn.checkpoint import load_model

    net, _ = load_model(model)
    assert sum(p.numel() for p in net.parameters()) > 0
