"""Opening input files: plain or gzip'd (detected from the bytes), with read and decoding errors
raised as :class:`~biocnn.errors.InputError` naming the file."""

from __future__ import annotations

import gzip
import io
from pathlib import Path

from biocnn.errors import InputError


def open_binary(path: str | Path) -> io.BufferedIOBase:
    """Open a plain or gzip'd file for reading bytes (gzip detected from its first bytes, not
    its name). Read errors (a truncated or corrupt gzip stream, a failing disk) are
    :class:`InputError` naming ``path``, not a bare ``EOFError`` from the gzip module."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "file not found")
    with open(path, "rb") as fh:
        magic = fh.read(2)
    return _Binary(gzip.open(path, "rb") if magic == b"\x1f\x8b" else open(path, "rb"), path)


class _Binary(io.BufferedIOBase):
    """The reads of :func:`open_binary`, with their errors naming the file (the one place where
    both the block reader of genome scans and :func:`open_text` get that)."""

    def __init__(self, fh, path: Path):
        super().__init__()
        self._fh, self._path = fh, path

    def _call(self, method, *args):
        try:
            return method(*args)
        except (EOFError, OSError) as exc:
            raise InputError(self._path, f"cannot read: {exc}") from None

    def read(self, size: int | None = -1) -> bytes:
        return self._call(self._fh.read, size)

    def read1(self, size: int = -1) -> bytes:
        return self._call(self._fh.read1, size)

    def readinto(self, buffer) -> int:
        return self._call(self._fh.readinto, buffer)

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return self._fh.seekable()

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        return self._call(self._fh.seek, offset, whence)

    def tell(self) -> int:
        return self._fh.tell()

    def close(self) -> None:
        self._fh.close()
        super().close()


class _Text(io.TextIOWrapper):
    """A text file whose bytes that are not UTF-8 surface as an :class:`InputError` naming it,
    not as a bare ``UnicodeDecodeError`` from deep inside a parser (read errors already do, from
    :func:`open_binary`)."""

    source: str

    def _failed(self, exc: UnicodeDecodeError) -> InputError:
        return InputError(
            self.source, f"not UTF-8 text (byte {exc.object[exc.start : exc.start + 1]!r}): is it a FASTA/TSV/VCF file?"
        )

    def read(self, size: int | None = -1) -> str:
        try:
            return super().read(size)
        except UnicodeDecodeError as exc:
            raise self._failed(exc) from None

    def readline(self, size: int = -1) -> str:
        try:
            return super().readline(size)
        except UnicodeDecodeError as exc:
            raise self._failed(exc) from None

    def __next__(self) -> str:
        try:
            return super().__next__()
        except UnicodeDecodeError as exc:
            raise self._failed(exc) from None


def open_text(path: str | Path) -> io.TextIOWrapper:
    """Open a plain or gzip'd text file (UTF-8, universal newlines; see :func:`open_binary`).

    Read errors (a truncated gzip, invalid UTF-8, I/O) are :class:`InputError` naming ``path``.
    """
    fh = _Text(open_binary(path), encoding="utf-8")
    fh.source = str(path)
    return fh
