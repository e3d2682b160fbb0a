"""The workflow stops at load, with the file and the key, on a task config it would fail on later."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def _dry_run(config: dict, tmp_path: Path) -> subprocess.CompletedProcess:
    path = tmp_path / "workflow.yaml"
    path.write_text(yaml.safe_dump(config))
    return subprocess.run(
        [sys.executable, "-m", "snakemake", "-n", "--nolock", "--cores", "1", "--configfile", str(path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_unknown_key_in_a_task_config_stops_the_dry_run(tmp_path):
    task = tmp_path / "malaria.yaml"
    task.write_text(
        (REPO / "configs" / "segment_malaria.yaml").read_text().replace("train:\n", "train:\n  epochz: 3\n", 1)
    )
    segment = {"kinds": ["malaria"], "malaria": {"config": str(task)}}
    run = _dry_run({"results": str(tmp_path / "out"), "tasks": ["segment"], "segment": segment}, tmp_path)
    out = run.stdout + run.stderr
    assert run.returncode != 0
    assert f"{task}: train.epochz: unknown key" in out
    # The same file without the stray key: the dry run goes through.
    task.write_text((REPO / "configs" / "segment_malaria.yaml").read_text())
    assert (
        _dry_run({"results": str(tmp_path / "out"), "tasks": ["segment"], "segment": segment}, tmp_path).returncode == 0
    )


def test_an_experiment_name_that_is_not_a_plain_folder_name_stops_the_dry_run(tmp_path):
    for name in ("../../escape", ".hidden", "a/b"):
        config = {"results": str(tmp_path / "out"), "tasks": ["deepbind"]}
        config["deepbind"] = {"experiments": {name: {"motif": "MA0139"}}}
        run = _dry_run(config, tmp_path)
        assert run.returncode != 0 and name in run.stdout + run.stderr
    config["deepbind"] = {"experiments": {"CTCF.v2-rep_1": {"motif": "MA0139"}}}
    assert _dry_run(config, tmp_path).returncode == 0
