"""Peak memory of a fresh Python process, for the benchmarks' memory goals."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
_REPORT = "print('PEAK_KB', next(l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM:')))"


def peak_rss_gb(code: str, args: list[str] | tuple[str, ...] = ()) -> float:
    """Run ``code`` (Python source, ``sys.argv[1:]`` = ``args``) in a fresh interpreter in the
    repository root; return its peak resident memory in GB, or raise with its stderr if it fails.

    Read from the child's own ``VmHWM`` (the high-water mark of its resident memory), not from
    ``getrusage``: on Linux ``ru_maxrss`` survives ``exec``, so a child spawned by a large
    benchmark process would report at least that process's size at the time of the spawn.
    """
    done = subprocess.run([sys.executable, "-c", f"{code}\n{_REPORT}", *args], capture_output=True, text=True, cwd=ROOT)
    if done.returncode != 0:
        raise RuntimeError(f"child process failed ({done.returncode}):\n{done.stderr[-2000:]}")
    kb = next(line.split()[1] for line in done.stdout.splitlines() if line.startswith("PEAK_KB"))
    return int(kb) / 1024 / 1024
