"""One writer per output folder, and finished rows that survive a killed run.

:func:`output_lock` holds an exclusive ``flock`` on a lock file inside the output folder for
the whole run: a second run into the same folder stops at once with one line naming the folder
instead of overwriting the first run's tables. The lock goes with the process, so a killed run
never leaves a stale lock behind.

:class:`Journal` appends finished rows to a JSON-lines file as they complete (flushed after
every append, fsynced every few seconds and on close); a re-run reads it back and goes on where
the killed run stopped. The tables themselves are still written atomically at the end.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from biocnn.errors import InputError
from biocnn.io.atomic import atomic_open

try:
    import fcntl
except ImportError:  # Windows: no flock; runs are not protected against each other
    fcntl = None

log = logging.getLogger(__name__)
LOCK_NAME = ".biocnn.lock"


@contextlib.contextmanager
def output_lock(folder: str | Path, command: str) -> Iterator[Path]:
    """Hold the output folder ``folder`` for this run; a second writer gets an :class:`InputError`."""
    folder = Path(folder)
    path = folder / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise InputError(folder, f"cannot create the lock file {LOCK_NAME} ({exc.strerror or exc})") from None
    try:
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise InputError(
                    folder,
                    f"another '{command}' is writing to this output folder; wait for it to finish "
                    "or choose another output folder",
                ) from None
            except OSError as exc:  # e.g. ENOLCK on a network filesystem without locks
                log.warning("%s: cannot lock the output folder (%s); do not run two jobs into it", folder, exc)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield path
    finally:
        os.close(fd)


def _lines(records: list[dict[str, Any]]) -> str:
    return "".join(json.dumps(r, sort_keys=True) + "\n" for r in records)


class Journal:
    """Rows appended to a JSON-lines file as they finish; see the module docstring.

    Each line is one JSON object. A line cut short by a kill is ignored when reading back.
    """

    def __init__(self, path: str | Path, sync_seconds: float = 5.0):
        self.path = Path(path)
        self.sync_seconds = sync_seconds
        self._fh = None
        self._synced = 0.0

    @staticmethod
    def read(path: str | Path) -> list[dict[str, Any]]:
        """The complete records of a journal (none if it does not exist)."""
        path = Path(path)
        if not path.is_file():
            return []
        records = []
        try:
            with open(path, encoding="utf-8") as fh:
                for line in fh:
                    if not line.endswith("\n"):
                        break  # the last line of a killed run
                    try:
                        record = json.loads(line)
                    except json.JSONDecodeError:
                        log.warning("%s: skipping a damaged line", path)
                        continue
                    if isinstance(record, dict):
                        records.append(record)
        except (OSError, UnicodeDecodeError) as exc:
            raise InputError(path, f"cannot read the progress journal ({exc}); delete it to start over") from None
        return records

    def open(self, records: list[dict[str, Any]] | None = None) -> Journal:
        """Start the journal afresh, holding ``records`` (e.g. those read back from a killed run)."""
        try:
            # Rewritten atomically: a kill now loses nothing, and a cut-short last line is dropped.
            with atomic_open(self.path, "w", encoding="utf-8") as fh:
                fh.write(_lines(records or []))
            self._fh = open(self.path, "a", encoding="utf-8")
        except OSError as exc:
            raise InputError(self.path, f"cannot write ({exc.strerror or exc})") from None
        self._synced = time.monotonic()
        return self

    def append(self, records: list[dict[str, Any]], sync: bool = False) -> None:
        """Append ``records``; flushed at once, fsynced when ``sync`` or every ``sync_seconds``."""
        if self._fh is None:
            raise RuntimeError("journal is not open")
        try:
            self._fh.write(_lines(records))
            self._fh.flush()
            if sync or time.monotonic() - self._synced >= self.sync_seconds:
                os.fsync(self._fh.fileno())
                self._synced = time.monotonic()
        except OSError as exc:
            raise InputError(self.path, f"cannot write ({exc.strerror or exc})") from None

    def close(self) -> None:
        if self._fh is not None:
            with contextlib.suppress(OSError):
                self._fh.flush()
                os.fsync(self._fh.fileno())
            self._fh.close()
            self._fh = None

    def remove(self) -> None:
        """Close and delete the journal (its rows are in the finished tables)."""
        self.close()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
