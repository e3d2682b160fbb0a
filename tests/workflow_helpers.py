"""Running the real workflow from a test: the repository's Snakefile on a config, in a folder."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run_workflow(
    workdir: Path, configfile: Path, *args: str, cores: int = 2, timeout: int = 600, **kwargs
) -> subprocess.CompletedProcess:
    """``snakemake --configfile CONFIGFILE --cores CORES ARGS`` with the repository's Snakefile,
    outputs under ``workdir``; output captured as text."""
    cmd = [
        sys.executable,
        "-m",
        "snakemake",
        "-s",
        str(REPO / "Snakefile"),
        "--directory",
        str(workdir),
        "--configfile",
        str(configfile),
        "--cores",
        str(cores),
        *args,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kwargs)
