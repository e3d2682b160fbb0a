"""The Snakemake skeleton: the demo DAG has the jobs the configs ask for, every rule logs and
declares its resources, and the SLURM profile gives every job memory, time and GPUs."""

import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
PROFILE = REPO / "configs" / "profiles" / "slurm"


def _snakemake(*args, cwd=REPO):
    return subprocess.run(
        [sys.executable, "-m", "snakemake", "--nolock", *args], cwd=cwd, capture_output=True, text=True, timeout=300
    )


def job_counts(dry_run_output: str) -> dict[str, int]:
    """Rule name -> number of jobs, from the 'Job stats' table of a dry run."""
    table = dry_run_output.split("Job stats:", 1)[1]
    counts = {}
    for line in table.splitlines()[3:]:
        name, count = line.split()
        if name == "total":
            assert int(count) == sum(counts.values()), table
            return counts
        counts[name] = int(count)
    raise AssertionError(f"no total line in the job table:\n{table}")


def dry_run_jobs(dry_run_output: str) -> list[tuple[str, dict[str, str]]]:
    """(rule, resources) of every job a dry run lists, resources as printed (name -> value)."""
    jobs = []
    for rule, body in re.findall(r"^(?:local)?rule (\w+):\n((?:    .*\n)+)", dry_run_output, re.M):
        line = re.search(r"^    resources: (.*)$", body, re.M)
        resources = dict(item.split("=", 1) for item in line.group(1).split(", ")) if line else {}
        jobs.append((rule, resources))
    return jobs


def expected_jobs(workflow_config: dict) -> Counter:
    """The jobs a full run of `workflow_config` needs, counted from the configs themselves."""
    tasks = workflow_config["tasks"]
    jobs = Counter(environment=1, report=1, all=1)
    if any(shutil.which(c) for c in ("chromium", "chromium-browser", "google-chrome")):
        jobs["report_browser_check"] = 1
    if "mammo" in tasks:
        jobs.update(
            dict.fromkeys(
                [
                    "mammo_synth_train",
                    "mammo_synth_heldout",
                    "mammo_train",
                    "mammo_evaluate",
                    "mammo_score",
                    "mammo_report",
                ],
                1,
            )
        )
    if "segment" in tasks:
        kinds = len(workflow_config["segment"]["kinds"])
        jobs.update(
            segment_synth=2 * kinds,
            segment_train=kinds,
            segment_predict=kinds,
            segment_evaluate=kinds,
            segment_report=1,
        )
    if "deepbind" in tasks:
        n = len(workflow_config["deepbind"]["experiments"])
        train = yaml.safe_load((REPO / workflow_config["deepbind"]["config"]).read_text())
        jobs.update(
            {
                f"deepbind_{step}": n
                for step in (
                    "synth",
                    "calibrate_select",
                    "train",
                    "evaluate",
                    "motifs",
                    "mutation_map",
                    "variants",
                    "scan",
                )
            }
        )
        jobs.update(deepbind_calibrate_trial=n * train["calibration"]["trials"], deepbind_report=1)
    return jobs


DEMO = yaml.safe_load((REPO / "configs" / "demo.yaml").read_text())
# The rules that train a model (and so ask for the GPUs of `train_gpus`): training and the
# calibration trials.
TRAINING_RULES = {"mammo_train", "segment_train", "deepbind_train", "deepbind_calibrate_trial"}


@pytest.mark.parametrize("tasks", [None, ["deepbind"]], ids=["demo", "deepbind-only"])
def test_demo_dag_has_one_job_per_step_and_input(tasks):
    # --forceall: the whole DAG, also in a checkout where the demo has already run.
    extra = ["--config", f"tasks={tasks}"] if tasks else []
    run = _snakemake("-n", "--forceall", "--cores", "2", *extra)
    assert run.returncode == 0, run.stderr + run.stdout
    assert job_counts(run.stdout) == expected_jobs({**DEMO, "tasks": tasks or DEMO["tasks"]})


def _rules():
    """The demo workflow's rules, parsed by Snakemake itself (no job is run or planned)."""
    from snakemake.api import SnakemakeApi
    from snakemake.settings.types import OutputSettings, ResourceSettings

    with SnakemakeApi(OutputSettings(dryrun=True)) as api:
        workflow = api.workflow(resource_settings=ResourceSettings(), snakefile=REPO / "Snakefile", workdir=REPO)
        parsed = workflow._workflow
        return list(parsed.rules), set(parsed._localrules), parsed.config


def test_every_rule_logs_and_declares_resources():
    rules, local, config = _rules()
    assert len(rules) > 20
    checked = set()
    for rule in rules:
        if rule.norun or rule.name in local:  # target-only rules (`all`) and local helpers
            continue
        logs = list(rule.log)
        assert len(logs) == 1 and logs[0].startswith(f"{config['results']}/logs/"), f"rule {rule.name}: log {logs}"
        # The log catches the command's output, so a failed job can be read afterwards.
        assert rule.shellcmd.rstrip().endswith("> {log} 2>&1"), f"rule {rule.name} does not write to its log"
        declared = {name: rule.resources[name].value for name in ("mem_mb", "runtime", "gpu") if name in rule.resources}
        for name in ("mem_mb", "runtime"):
            assert isinstance(declared.get(name), int) and declared[name] > 0, f"rule {rule.name}: {name} {declared}"
        gpus = declared.get("gpu")
        assert gpus == (config["train_gpus"] if rule.name in TRAINING_RULES else None), f"rule {rule.name}: gpu"
        checked.add(rule.name)
    assert TRAINING_RULES < checked and {"environment", "report", "mammo_score", "deepbind_scan"} < checked


def test_bad_workflow_config_is_rejected(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("results: out\ntasks: [mammo, radiology]\n")
    run = _snakemake("-n", "--cores", "1", "--configfile", str(bad))
    assert run.returncode != 0
    assert "radiology" in run.stdout + run.stderr


def test_slurm_profile_is_read_by_snakemake_and_its_defaults_reach_jobs(tmp_path):
    from snakemake.cli import parse_args
    from snakemake_interface_executor_plugins.registry import ExecutorPluginRegistry

    _, args = parse_args(["--profile", str(PROFILE), "-n"])
    assert args.executor == "slurm" and ExecutorPluginRegistry().get_plugin(args.executor).name == "slurm"
    defaults = {name: args.default_resources[name].value for name in ("mem_mb", "runtime")}
    assert all(isinstance(v, int) and v > 0 for v in defaults.values())
    # A rule that declares nothing gets the profile's default memory and time.
    (tmp_path / "Snakefile").write_text('rule bare:\n    output: "x"\n    shell: "touch {output}"\n')
    run = _snakemake("-n", "--profile", str(PROFILE), cwd=tmp_path)
    assert run.returncode == 0, run.stderr + run.stdout
    [(rule, resources)] = dry_run_jobs(run.stdout)
    assert rule == "bare" and resources["mem_mb"] == str(defaults["mem_mb"])
    assert resources["runtime"] == str(defaults["runtime"])


def test_slurm_profile_dry_run_gives_every_job_memory_time_and_training_gpus():
    run = _snakemake("-n", "--forceall", "--profile", str(PROFILE))
    assert run.returncode == 0, run.stderr + run.stdout
    jobs = dry_run_jobs(run.stdout)
    assert Counter(rule for rule, _ in jobs) == expected_jobs(DEMO)
    rules = {rule.name: rule for rule in _rules()[0]}
    for rule, resources in jobs:
        if rule == "all":
            continue
        # What the rule declares is what SLURM is asked for (the profile's defaults do not override it).
        declared = rules[rule].resources
        assert resources["mem_mb"] == str(declared["mem_mb"].value), f"{rule}: {resources}"
        assert resources["runtime"] == str(declared["runtime"].value), f"{rule}: {resources}"
        assert resources.get("gpu") == (str(DEMO["train_gpus"]) if rule in TRAINING_RULES else None), rule
