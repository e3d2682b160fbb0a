"""Atomic file writes: write to a temporary file in the same directory, then rename.

A reader (or a resumed run) therefore sees either the old file or the complete new one,
never a truncated one. ``os.replace`` is atomic on POSIX and Windows when source and target
live on the same filesystem, which is why the temporary file sits beside the target.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

# This machine, in temporary file names: a shared folder may hold files of writers on other
# machines, whose PIDs mean nothing here.
_HOST = hashlib.sha1(socket.gethostname().encode()).hexdigest()[:8]
_TMP_NAME = re.compile(r"\..*\.tmp-([0-9a-f]{8})-([0-9]+)\..*")
_SWEPT: set[str] = set()  # folders already swept by this process


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # e.g. EPERM: it exists but belongs to someone else
        return True
    return True


def remove_stale_temporaries(folder: str | Path) -> list[Path]:
    """Remove the temporary files that killed writers on this machine left in ``folder``.

    Only files named as :func:`atomic_path` names them, by this machine, whose writer's PID no
    longer runs, are removed: a live writer's file, or another machine's, is left alone.
    Returns the removed files.
    """
    removed = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        match = _TMP_NAME.fullmatch(entry.name)
        if match is None or match[1] != _HOST:
            continue
        pid = int(match[2])
        if pid != os.getpid() and not _pid_alive(pid):
            with contextlib.suppress(OSError):
                if entry.is_dir(follow_symlinks=False):  # a staging folder (:func:`temporary_dir`)
                    shutil.rmtree(entry.path)
                else:
                    os.unlink(entry.path)
                removed.append(Path(entry.path))
    return removed


def _sweep_once(folder: str | Path) -> None:
    """Remove killed writers' temporaries from ``folder`` the first time this process writes there."""
    folder = os.path.abspath(folder)
    if folder not in _SWEPT:
        _SWEPT.add(folder)
        remove_stale_temporaries(folder)


def temporary_dir(folder: str | Path, name: str) -> Path:
    """A new hidden staging folder in ``folder``, named like :func:`atomic_path`'s temporaries
    (``.<name>.tmp-<machine>-<pid>.<random>``) so that a later run removes it if this process
    is killed before it cleans up. The caller moves files out of it and removes it."""
    Path(folder).mkdir(parents=True, exist_ok=True)
    _sweep_once(folder)
    return Path(tempfile.mkdtemp(prefix=f".{name}.tmp-{_HOST}-{os.getpid()}.", dir=folder))


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; move it onto ``path`` if the block succeeds.

    Use this for writers that want a file name (``safetensors``, ``nibabel``, ``PIL``,
    ``matplotlib``). On error the temporary file is removed and ``path`` is untouched. The
    temporary name, ``.<name>.tmp-<machine>-<pid>.<random><suffixes>``, lets a later run
    remove what a killed one left behind: the first write of a process into a folder sweeps it
    (:func:`remove_stale_temporaries`). An ``OSError`` without a file name (a full disk while
    writing) is raised again naming ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _sweep_once(path.parent)
    # Keep the suffixes so libraries that infer the format from the name still work.
    fd, tmp = tempfile.mkstemp(
        prefix=f".{path.name}.tmp-{_HOST}-{os.getpid()}.", suffix="".join(path.suffixes), dir=path.parent
    )
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        if isinstance(exc, OSError) and exc.filename is None and exc.errno is not None:
            raise OSError(exc.errno, exc.strerror or str(exc), str(path)) from exc
        raise


@contextlib.contextmanager
def atomic_open(path: str | Path, mode: str = "w", **kwargs: Any) -> Iterator[Any]:
    """Open a temporary file for writing; it replaces ``path`` only when the block succeeds."""
    with atomic_path(path) as tmp:
        with open(tmp, mode, **kwargs) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())


def write_text(path: str | Path, text: str) -> None:
    """Atomically write ``text`` to ``path``."""
    with atomic_open(path, "w", encoding="utf-8") as fh:
        fh.write(text)


def write_json(path: str | Path, obj: Any) -> None:
    """Atomically write ``obj`` as indented, key-sorted JSON (stable diffs, stable hashes)."""
    write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")


def _json_default(obj: Any) -> Any:
    # numpy scalars and paths show up in metrics and configs; make them plain JSON.
    if hasattr(obj, "item"):
        return obj.item()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")
