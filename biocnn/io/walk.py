"""Walking an input folder so that every entry is accounted for.

:func:`walk_files` returns the regular files to process, the entries that could not be read
(with the reason) and the entries left out on purpose (with the reason), so a batch command can
report ``entries = files + failures + skipped`` and never lose a study without a word.
Symbolic links to folders are followed; a folder reached twice (a link loop, two links to one
study) is walked once, recognised by its device and inode numbers.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

HIDDEN = "hidden"
EXCLUDED = "the output folder"
SEEN = "a folder already walked (symbolic link loop or second link)"


@dataclass
class Walk:
    """What a walk found: files to process, unreadable entries and deliberately skipped ones."""

    files: list[Path] = field(default_factory=list)
    failures: list[tuple[Path, str]] = field(default_factory=list)
    skipped: list[tuple[Path, str]] = field(default_factory=list)

    def skipped_counts(self) -> dict[str, int]:
        """Skipped entries counted by reason."""
        counts: dict[str, int] = {}
        for _, reason in self.skipped:
            counts[reason] = counts.get(reason, 0) + 1
        return counts


def _identity(st: os.stat_result) -> tuple[int, int]:
    return st.st_dev, st.st_ino


def _stat_failure(path: Path, exc: OSError, is_link: bool) -> str:
    if exc.errno == errno.ELOOP:
        return "symbolic link loop (the link points back at itself)"
    if is_link and exc.errno == errno.ENOENT:
        return "broken symbolic link (its target does not exist)"
    return f"cannot read ({exc.strerror or exc})"


def walk_files(root: str | Path, exclude: Iterable[str | Path] = ()) -> Walk:
    """Every entry under the folder ``root``, sorted by name within each folder.

    Hidden entries (names starting with ``.``) and the folders in ``exclude`` (e.g. an output
    folder inside the input) are skipped; symbolic links to folders are followed, each folder
    walked once; folders that cannot be listed, broken links and anything that is neither a
    file nor a folder (FIFOs, sockets, devices, which would block or mislead a decoder) are
    failures.
    """
    root = Path(root)
    walk = Walk()
    excluded = set()
    for path in exclude:
        try:
            excluded.add(_identity(os.stat(path)))
        except OSError:
            pass  # an excluded folder that does not exist cannot be met
    visited = {_identity(os.stat(root))}
    stack = [root]
    while stack:
        folder = stack.pop()
        try:
            with os.scandir(folder) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as exc:
            walk.failures.append((folder, f"folder cannot be read ({exc.strerror or exc})"))
            continue
        subfolders = []
        for entry in entries:
            path = folder / entry.name
            if entry.name.startswith("."):
                walk.skipped.append((path, HIDDEN))
                continue
            is_link = entry.is_symlink()
            try:
                st = os.stat(path)  # follows links
            except OSError as exc:
                walk.failures.append((path, _stat_failure(path, exc, is_link)))
                continue
            if stat.S_ISDIR(st.st_mode):
                key = _identity(st)
                if key in excluded:
                    walk.skipped.append((path, EXCLUDED))
                elif key in visited:
                    walk.skipped.append((path, SEEN))
                else:
                    visited.add(key)
                    subfolders.append(path)
            elif stat.S_ISREG(st.st_mode):
                walk.files.append(path)
            else:
                walk.failures.append((path, "not a regular file (a FIFO, socket or device)"))
        stack.extend(reversed(subfolders))  # depth first, in name order
    return walk
