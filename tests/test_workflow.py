"""The Snakemake skeleton: the demo DAG builds, and the SLURM profile is valid."""

import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def _snakemake(*args, cwd=REPO):
    return subprocess.run([sys.executable, "-m", "snakemake", "--nolock", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=300)


def test_demo_dag_dry_run():
    # --forceall: the whole DAG, also in a checkout where the demo has already run.
    run = _snakemake("-n", "--forceall", "--cores", "2")
    assert run.returncode == 0, run.stderr + run.stdout
    assert "environment" in run.stdout and "all" in run.stdout


def test_every_rule_has_log_and_resources():
    run = _snakemake("--list-rules")
    assert run.returncode == 0, run.stderr
    text = "\n".join(p.read_text() for p in [REPO / "Snakefile", *sorted((REPO / "workflows").glob("*.smk"))])
    rules = [chunk for chunk in text.split("\nrule ")[1:]]
    for chunk in rules:
        name = chunk.split(":", 1)[0]
        if name == "all" or "localrule: True" in chunk:
            continue
        assert "log:" in chunk, f"rule {name} has no log:"
        assert "mem_mb" in chunk and "runtime" in chunk, f"rule {name} declares no mem_mb/runtime"


def test_bad_workflow_config_is_rejected(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("results: out\ntasks: [mammo, radiology]\n")
    run = _snakemake("-n", "--cores", "1", "--configfile", str(bad))
    assert run.returncode != 0
    assert "radiology" in run.stdout + run.stderr


def test_slurm_profile_dry_run():
    run = _snakemake("-n", "--forceall", "--profile", "configs/profiles/slurm")
    assert run.returncode == 0, run.stderr + run.stdout
    assert "report" in run.stdout


def test_slurm_profile_declares_executor_and_resources():
    profile = yaml.safe_load((REPO / "configs/profiles/slurm/config.yaml").read_text())
    assert profile["executor"] == "slurm"
    assert {"mem_mb", "runtime"} <= set(profile["default-resources"])
