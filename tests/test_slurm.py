"""A real SLURM run: a one-node cluster (munged, slurmctld, slurmd from Debian's packages) is
started in a temporary directory, a tiny workflow of every task is submitted through the
project's SLURM profile, and each job must have run as a SLURM job with the resources its rule
declares and given the same outputs as a local run of the same workflow.

Needs root and the `slurmctld`, `slurmd` and `munge` packages (.ci/run installs them); without
them the tests are skipped with the reason."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from test_mammo_workflow import TRAIN_CONFIG as MAMMO_TRAIN
from test_segment_workflow import TINY as SEGMENT_TINY
from workflow_helpers import workflow_command

REPO = Path(__file__).resolve().parents[1]
PROFILE = REPO / "configs" / "profiles" / "slurm"
COMMANDS = ("munged", "slurmctld", "slurmd", "sbatch", "srun", "squeue", "scontrol", "scancel", "sinfo")
PARTITION = "biocnn"

# On a cluster without accounting (no slurmdbd) job states come from squeue; the first status
# check comes 5 s after a submission instead of 40 s. Logs of successful jobs are kept so the
# test can read them.
SLURM_ARGS = [
    "--slurm-status-command",
    "squeue",
    "--slurm-no-account",
    "--slurm-init-seconds-before-status-checks",
    "5",
    "--slurm-keep-successful-logs",
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Cluster:
    """munged + slurmctld + slurmd, every file under `root`, stopped by the pids they were started with."""

    def __init__(self, root: Path):
        self.root = root
        self.conf = root / "slurm.conf"
        self.procs: list[subprocess.Popen] = []
        # The jobstep executor removes SLURM_* variables (SLURM_CONF too) before its srun inside a
        # job; a real cluster's config is at /etc/slurm/slurm.conf, this one's is found via PATH.
        self.shim = root / "bin"
        self.env = {**os.environ, "SLURM_CONF": str(self.conf), "PATH": f"{self.shim}{os.pathsep}{os.environ['PATH']}"}

    def start(self) -> None:
        munge = self.root / "munge"
        for sub in (munge, self.root / "state", self.root / "spool", self.shim):
            sub.mkdir(mode=0o700)
        key = munge / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
        sock = munge / "munge.socket"
        probe = subprocess.run(["slurmd", "-C"], capture_output=True, text=True, timeout=30)
        node = re.search(r"NodeName=(\S+)", probe.stdout)
        memory = re.search(r"RealMemory=(\d+)", probe.stdout)
        if probe.returncode != 0 or not node or not memory:
            raise RuntimeError(f"slurmd -C: {probe.stdout} {probe.stderr}")
        node = node.group(1)
        r = self.root
        self.conf.write_text(f"""\
ClusterName=biocnntest
SlurmctldHost={node}(127.0.0.1)
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={sock}
StateSaveLocation={r}/state
SlurmdSpoolDir={r}/spool
SlurmctldPidFile={r}/slurmctld.pid
SlurmdPidFile={r}/slurmd.pid
SlurmctldLogFile={r}/slurmctld.log
SlurmdLogFile={r}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/filetxt
JobCompLoc={r}/jobcomp.txt
ReturnToService=2
MinJobAge=900
MailProg=/bin/true
NodeName={node} NodeAddr=127.0.0.1 CPUs=2 RealMemory={memory.group(1)} State=UNKNOWN
PartitionName={PARTITION} Nodes={node} Default=YES MaxTime=INFINITE State=UP
""")
        srun = shutil.which("srun")
        (self.shim / "srun").write_text(f'#!/bin/sh\nSLURM_CONF="{self.conf}" exec "{srun}" "$@"\n')
        (self.shim / "srun").chmod(0o755)
        self._spawn(
            "munged",
            [
                "munged",
                "--foreground",
                "--force",
                f"--socket={sock}",
                f"--key-file={key}",
                f"--log-file={munge}/munged.log",
                f"--pid-file={munge}/munged.pid",
                f"--seed-file={munge}/munged.seed",
            ],
        )
        self._wait(lambda: sock.exists(), "munged socket")
        self._spawn("slurmctld", ["slurmctld", "-D", "-i", "-f", str(self.conf)])
        self._spawn("slurmd", ["slurmd", "-D", "-f", str(self.conf)])
        self._wait(lambda: self.slurm("sinfo", "-h", "-o", "%T").stdout.strip() == "idle", "an idle node")

    def _spawn(self, name: str, cmd: list[str]) -> None:
        with open(self.root / f"{name}.out", "w") as out:
            self.procs.append(subprocess.Popen(cmd, env=self.env, stdout=out, stderr=subprocess.STDOUT))

    def _wait(self, ready, what: str, timeout: float = 30) -> None:
        end = time.monotonic() + timeout
        while not ready():
            dead = [p.args[0] for p in self.procs if p.poll() is not None]
            if dead or time.monotonic() > end:
                outs = " | ".join((self.root / f"{p.args[0]}.out").read_text()[-400:] for p in self.procs)
                raise RuntimeError(f"no {what} ({'exited: ' + ', '.join(dead) if dead else 'timed out'}): {outs}")
            time.sleep(0.5)

    def slurm(self, *cmd: str) -> subprocess.CompletedProcess:
        return subprocess.run(cmd, env=self.env, capture_output=True, text=True, timeout=30)

    def jobs(self) -> dict[str, dict[str, str]]:
        """Job id -> `scontrol show job` fields, for every job slurmctld still holds."""
        out = self.slurm("scontrol", "show", "job", "-o").stdout
        jobs = {}
        for line in out.splitlines():
            fields = dict(re.findall(r"(\w+)=(\S*)", line))
            if "JobId" in fields:
                jobs[fields["JobId"]] = fields
        return jobs

    def stop(self) -> None:
        if self.procs and all(p.poll() is None for p in self.procs):
            self.slurm("scancel", "--full", f"--partition={PARTITION}")
            end = time.monotonic() + 30
            while self.slurm("squeue", "-h").stdout.strip() and time.monotonic() < end:
                time.sleep(1)
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    missing = [c for c in COMMANDS if not shutil.which(c)]
    if missing:
        pytest.skip(
            f"SLURM not installed (missing {', '.join(missing)}); apt-get install slurmctld slurmd munge (.ci/run does)"
        )
    if os.geteuid() != 0:
        pytest.skip("the test cluster's daemons run as root")
    try:
        import snakemake_executor_plugin_slurm  # noqa: F401
    except ImportError:
        pytest.skip('snakemake-executor-plugin-slurm not installed (pip install -e ".[slurm]")')
    c = Cluster(tmp_path_factory.mktemp("slurm"))
    try:
        c.start()
    except (RuntimeError, OSError, subprocess.SubprocessError) as err:
        c.stop()
        pytest.skip(f"the SLURM daemons did not start: {err}")
    yield c
    c.stop()
    assert all(p.poll() is not None for p in c.procs)


def _tiny_config(root: Path) -> dict:
    """One small run of each task, from the tiny configs of the tasks' workflow tests."""
    (root / "mammo.yaml").write_text(yaml.safe_dump(MAMMO_TRAIN))
    deepbind = yaml.safe_load((REPO / "configs" / "deepbind_demo.yaml").read_text())
    deepbind["model"].update(num_motifs=4, motif_len=12, hidden=0)
    deepbind["train"].update(epochs=3, batch_size=32)
    deepbind["calibration"].update(trials=2, folds=2, epochs=1)
    deepbind["calibration"]["space"].update(num_motifs=[4], hidden=[0])
    (root / "deepbind.yaml").write_text(yaml.safe_dump(deepbind))
    segment = yaml.safe_load(SEGMENT_TINY)["segment"]
    return {
        "results": "results",
        "tasks": ["mammo", "segment", "deepbind"],
        "biocnn": f"{sys.executable} -m biocnn",
        "train_gpus": 0,
        "browser_check": False,
        "mammo": {
            "config": str(root / "mammo.yaml"),
            "train_exams": 8,
            "heldout_exams": 2,
            "heldout_tomo": 0,
            "seed": 2,
        },
        "segment": {**segment, "kinds": ["malaria"]},
        "deepbind": {
            "config": str(root / "deepbind.yaml"),
            "seed": 1,
            "demo": {"n_train": 150, "n_test": 40, "genome_bp": 20000},
            "experiments": {"CTCF": {"motif": "MA0139"}},
        },
    }


# One short chain of jobs per task: data -> model (-> evaluation for mammography).
TARGETS = [
    "results/mammo/evaluate/metrics.json",
    "results/segment/malaria/model/weights.safetensors",
    "results/deepbind/CTCF/model/weights.safetensors",
]
# Timings, and the checksum of a gzip file whose header holds the time it was written.
VOLATILE = {"seconds", "images_per_second", "data_sha256", "loop_seconds", "loop_finished_at"}


def _snakemake(workdir: Path, *args: str, env=None, log: Path | None = None):
    """Snakemake on the tiny config in `workdir`; started in the background when `log` is given."""
    cmd = workflow_command(workdir, workdir / "tiny.yaml", *args, cores=None)
    if log:
        with open(log, "w") as out:
            return subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)


def _content(path: Path):
    """What must be reproduced of an output: JSON without timings, tensors and their metadata,
    the uncompressed bytes of a gzip file, else the bytes."""
    if path.suffix == ".json":

        def strip(value):
            if isinstance(value, dict):
                return {k: strip(v) for k, v in value.items() if k not in VOLATILE}
            return [strip(v) for v in value] if isinstance(value, list) else value

        return strip(json.loads(path.read_text()))
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), "np") as fh:
            tensors = {k: hashlib.sha256(fh.get_tensor(k).tobytes()).hexdigest() for k in fh.keys()}
            return fh.metadata(), tensors
    data = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    return hashlib.sha256(data).hexdigest()


def _outputs(results: Path) -> dict[str, object]:
    kinds = (".json", ".csv", ".tsv", ".safetensors", ".gz")
    files = [p for p in results.rglob("*") if p.suffix in kinds and not {"benchmarks", "logs"} & set(p.parts)]
    return {str(p.relative_to(results)): _content(p) for p in sorted(files)}


@pytest.mark.slurm
@pytest.mark.slow
def test_workflow_runs_as_slurm_jobs_and_matches_a_local_run(cluster, tmp_path):
    config = _tiny_config(tmp_path)
    local, remote = tmp_path / "local", tmp_path / "slurm"
    for d in (local, remote):
        d.mkdir()
        (d / "tiny.yaml").write_text(yaml.safe_dump(config))
    # The local run goes alongside: the SLURM run spends most of its time waiting on the scheduler.
    local_run = _snakemake(local, "--cores", "2", *TARGETS, log=tmp_path / "local.log")
    start = time.monotonic()
    try:
        run = _snakemake(remote, "--profile", str(PROFILE), *SLURM_ARGS, *TARGETS, env=cluster.env)
        slurm_s = time.monotonic() - start
        local_run.wait(timeout=600)
    finally:
        if local_run.poll() is None:
            local_run.kill()
    assert local_run.returncode == 0, (tmp_path / "local.log").read_text()[-3000:]
    log = run.stdout + run.stderr
    assert run.returncode == 0, log[-4000:]

    # Every job was submitted with sbatch (one per job, no retries) and completed on the cluster.
    submitted = re.findall(r"Job (\d+) has been submitted with SLURM jobid (\d+) \(log: (.+?)\)\.", log)
    rules = re.findall(r"^rule (\w+):", log, re.M)
    assert rules and len(submitted) == len(rules), log[-4000:]
    assert len({job for job, _, _ in submitted}) == len(submitted)
    held = cluster.jobs()
    declared = {rule.name: rule.resources for rule in _workflow_rules(remote)}
    ran = []
    for _, slurm_id, slurm_log in submitted:
        job = held[slurm_id]
        rule = re.fullmatch(r"rule_(\w+?)(_wildcards_.*)?", job["Comment"]).group(1)
        ran.append(rule)
        assert job["JobState"] == "COMPLETED" and job["Partition"] == PARTITION, job
        # The rule's threads, memory and time are what the scheduler gave the job.
        spec = {name: declared[rule][name].value for name in ("_cores", "mem_mb", "runtime")}
        assert int(job["NumCPUs"]) == spec["_cores"], (rule, spec, job)
        assert job["MinMemoryNode"] == f"{spec['mem_mb']}M", (rule, spec, job)
        assert _minutes(job["TimeLimit"]) == spec["runtime"], (rule, spec, job)
        assert Path(slurm_log).is_file() and f"rule {rule}:" in Path(slurm_log).read_text(), slurm_log
    assert sorted(ran) == sorted(rules)
    assert {"mammo_train", "segment_train", "deepbind_calibrate_trial", "deepbind_train"} <= set(ran)

    # Same outputs as the local run, byte for byte.
    expected, got = _outputs(local / "results"), _outputs(remote / "results")
    assert len(expected) > 15 and got.keys() == expected.keys(), set(expected) ^ set(got)
    assert [name for name in expected if got[name] != expected[name]] == []
    print(f"SLURM run: {len(submitted)} jobs in {slurm_s:.0f} s")


def _workflow_rules(workdir: Path):
    from snakemake.api import SnakemakeApi
    from snakemake.settings.types import ConfigSettings, OutputSettings, ResourceSettings

    with SnakemakeApi(OutputSettings(dryrun=True)) as api:
        workflow = api.workflow(
            resource_settings=ResourceSettings(),
            snakefile=REPO / "Snakefile",
            workdir=workdir,
            config_settings=ConfigSettings(configfiles=[workdir / "tiny.yaml"]),
        )
        return list(workflow._workflow.rules)


def _minutes(limit: str) -> int:
    """SLURM's TimeLimit ([D-]HH:MM:SS or MM:SS) in minutes."""
    days, _, clock = limit.rpartition("-")
    parts = [int(x) for x in clock.split(":")]
    while len(parts) < 3:
        parts.insert(0, 0)
    return int(days or 0) * 1440 + parts[0] * 60 + parts[1] + (parts[2] > 0)


@pytest.mark.slurm
def test_a_failing_cluster_job_names_its_logs(cluster, tmp_path):
    # Every rule's command is `false ...`: the first job fails on the cluster.
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump({"results": "results", "tasks": ["mammo"], "biocnn": "false"}))
    run = _snakemake(
        tmp_path, "--profile", str(PROFILE), *SLURM_ARGS, "--retries", "0", "results/environment.json", env=cluster.env
    )
    log = run.stdout + run.stderr
    assert run.returncode != 0
    [(slurm_id, slurm_log)] = re.findall(r"submitted with SLURM jobid (\d+) \(log: (.+?)\)\.", log)
    error = log[log.index("Error in rule environment:") :]
    # Snakemake's error names both the rule's log and the SLURM job's log, which holds the failure.
    assert re.search(rf"log: results/logs/environment.log, {re.escape(slurm_log)}", error), error
    assert "Error in rule environment" in Path(slurm_log).read_text()
    assert cluster.jobs()[slurm_id]["JobState"] == "FAILED"
