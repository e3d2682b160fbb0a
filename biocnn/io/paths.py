"""Output paths built from file contents (UIDs, patient ids, case ids, FASTA record names).

A value read from a user's file is never used as a path as it stands: :func:`safe_component`
turns it into one file name, :func:`inside` checks that the joined path stays under its output
folder, and :func:`ensure_writable_dir` fails early, with one line, when a run could not write
its results (read-only folder, a file where a folder should be, a full disk).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
from pathlib import Path

from biocnn.errors import InputError

# Characters a component keeps as they are; anything else is replaced by "_".
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")
# Names Windows reserves whatever their extension.
_RESERVED = {"CON", "PRN", "AUX", "NUL", *(f"COM{i}" for i in range(1, 10)), *(f"LPT{i}" for i in range(1, 10))}
# Marks a changed component; it never survives unchanged, so a changed component cannot equal an unchanged one.
_MARK = "~"
_HASH_CHARS = 12


def safe_component(text: str, max_len: int = 100) -> str:
    """A file-name-safe version of ``text``: one path component, distinct for distinct inputs.

    Kept as it is when ``text`` is made only of letters, digits, ``.``, ``_`` and ``-``, does not
    start with ``.`` or ``-``, does not end with ``.``, is not a reserved device name and fits
    ``max_len``. Otherwise the other characters become ``_``, the result is cut to fit and
    ``~`` plus a hash of the whole original is appended (``../../x`` -> ``.._.._x`` is never
    returned: that becomes ``_.._.._x~<hash>``).
    """
    text = str(text)
    if max_len < _HASH_CHARS + 8:
        raise ValueError(f"max_len must be at least {_HASH_CHARS + 8}, got {max_len}")
    if (
        text
        and not _UNSAFE.search(text)
        and text[0] not in ".-"
        and not text.endswith(".")
        and text.split(".")[0].upper() not in _RESERVED
        and len(text) <= max_len
    ):
        return text
    digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:_HASH_CHARS]
    clean = _UNSAFE.sub("_", text)
    if clean[:1] in (".", "-"):
        clean = "_" + clean
    clean = clean[: max_len - len(digest) - 1].rstrip(".")
    return f"{clean}{_MARK}{digest}"


def inside(root: str | Path, *parts: str | Path) -> Path:
    """``root`` joined with ``parts``, after checking that the result stays inside ``root``.

    The check resolves both (``..``, absolute parts, symbolic links that exist); the joined,
    unresolved path is returned. Raises :class:`~biocnn.errors.InputError` if it escapes.
    """
    root = Path(root)
    path = root.joinpath(*parts)
    if not path.resolve().is_relative_to(root.resolve()):
        raise InputError(path, f"would be written outside the output folder {root}")
    return path


def ensure_writable_dir(path: str | Path) -> Path:
    """Create the output folder ``path`` if needed and check a file can be written in it.

    Call before long work, so a read-only folder, a file in the way or a full disk stops the
    run at once with one line naming the folder, not after hours with a traceback.
    """
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        if not path.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(path))
        probe = path / f".biocnn-write-check-{os.getpid()}"
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, b"x")
            os.fsync(fd)
        finally:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(probe)
    except (FileExistsError, NotADirectoryError):
        raise InputError(path, "output folder is not writable (a file is in the way of the folder)") from None
    except OSError as exc:
        raise InputError(path, f"output folder is not writable ({exc.strerror or exc})") from None
    return path
