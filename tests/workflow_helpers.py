"""Running the real workflow from a test: the repository's Snakefile on a config, in a folder."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def workflow_command(workdir: Path, configfile: Path, *args: str, cores: int | None = 2) -> list[str]:
    """``snakemake --configfile CONFIGFILE [--cores CORES] ARGS`` with the repository's Snakefile,
    outputs under ``workdir`` (``cores=None`` leaves ``--cores`` to ARGS or a profile)."""
    cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--directory", str(workdir)]
    cmd += ["--configfile", str(configfile)]
    if cores is not None:
        cmd += ["--cores", str(cores)]
    return [*cmd, *args]


def run_workflow(
    workdir: Path, configfile: Path, *args: str, cores: int = 2, timeout: int = 600, **kwargs
) -> subprocess.CompletedProcess:
    """:func:`workflow_command`, run to the end; output captured as text."""
    cmd = workflow_command(workdir, configfile, *args, cores=cores)
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kwargs)
