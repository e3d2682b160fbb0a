"""Snakemake rerun behaviour on a tiny config (issue: the whole demo from a fresh clone).

- a second run does nothing;
- deleting one output re-runs only the jobs that depend on it;
- a run killed mid-training continues with --rerun-incomplete from the last epoch's
  checkpoint, not from scratch.
"""

from __future__ import annotations

import copy
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from test_mammo_workflow import TRAIN_CONFIG as TINY_MAMMO_TRAIN
from test_workflow import job_counts
from workflow_helpers import run_workflow, workflow_command

MODEL = "results/mammo/model"

# The mammography workflow test's tiny model, with many short epochs and no early stop: that
# leaves time to kill the run in the middle.
TRAIN_CONFIG = copy.deepcopy(TINY_MAMMO_TRAIN)
TRAIN_CONFIG["train"].update(epochs=10, early_stopping={"monitor": "val_auc", "mode": "max", "patience": 100})


def _snakemake(workdir: Path, *args: str, **kwargs):
    return run_workflow(workdir, workdir / "tiny.yaml", *args, **kwargs)


@pytest.fixture()
def workdir(tmp_path):
    (tmp_path / "train.yaml").write_text(yaml.safe_dump(TRAIN_CONFIG))
    config = {
        "results": "results",
        "tasks": ["mammo"],
        "biocnn": f"{sys.executable} -m biocnn",
        "browser_check": False,
        "mammo": {
            "config": str(tmp_path / "train.yaml"),
            "train_exams": 8,
            "heldout_exams": 2,
            "heldout_tomo": 0,
            "seed": 3,
        },
    }
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(config))
    return tmp_path


@pytest.mark.slow
def test_killed_training_resumes_then_reruns_do_only_what_is_needed(workdir):
    # 1. Start the workflow, kill it (SIGKILL, whole process group) once epoch 2 is on disk.
    latest = workdir / MODEL / "state" / "latest.json"
    cmd = workflow_command(workdir, workdir / "tiny.yaml")
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 400
    before_kill = None
    while time.time() < deadline and proc.poll() is None:
        if latest.is_file():
            try:
                state = json.loads(latest.read_text())
            except json.JSONDecodeError:
                state = None  # cannot happen with atomic writes, but never kill on a guess
            if state and state["epoch"] >= 2:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                before_kill = state
                break
        time.sleep(0.02)
    assert before_kill is not None, "training finished or never started before it could be killed"
    assert before_kill["epoch"] < TRAIN_CONFIG["train"]["epochs"]
    assert not (workdir / MODEL / "weights.safetensors").exists()  # model dir is written at the end

    # 2. Rerun: training continues from the saved epoch instead of starting again. A hard kill
    #    leaves Snakemake's lock behind; --unlock removes it (as after a power loss).
    assert _snakemake(workdir, "--unlock").returncode == 0
    rerun = _snakemake(workdir, "--rerun-incomplete")
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    log = (workdir / "results" / "logs" / "mammo" / "train.log").read_text()
    assert "resuming" in log
    rows = [json.loads(line) for line in (workdir / MODEL / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == list(range(1, TRAIN_CONFIG["train"]["epochs"] + 1))
    # The epochs done before the kill were not redone: their recorded rows (timings included) survive.
    assert rows[: before_kill["epoch"]] == before_kill["history"]

    # 3. A second run has nothing to do.
    again = _snakemake(workdir, "-n")
    assert again.returncode == 0 and "Nothing to be done" in again.stdout + again.stderr

    # 4. Deleting the scoring summary re-runs scoring and what depends on it, nothing upstream
    #    (no synthesis, no training, no evaluation).
    (workdir / "results" / "mammo" / "score" / "summary.json").unlink()
    dry = _snakemake(workdir, "-n")
    assert dry.returncode == 0, dry.stderr
    assert job_counts(dry.stdout) == {"mammo_score": 1, "mammo_report": 1, "report": 1, "all": 1}
    assert (workdir / "results" / "report.html").is_file()
