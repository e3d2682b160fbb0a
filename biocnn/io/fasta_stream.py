"""Streaming FASTA reading for inputs of any size (chromosomes included): records come as
pieces of ASCII bases read in large binary blocks, never as whole sequences, and pieces become
base codes with validation that names the record and position.

Biopython's ``SeqIO`` (used by :mod:`biocnn.io.sequences` for training sets) holds each
record in memory whole and parses line by line; genome scans need constant memory and a
reader much faster than the scoring, hence this small reader (tested to agree with Biopython
on plain, gzip and CRLF files).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from biocnn.errors import InputError
from biocnn.io.dna import CODES
from biocnn.io.textfiles import open_binary

_READ_BLOCK = 1 << 20  # bytes per read of the FASTA file


def chunk_codes(
    raw: bytes | memoryview,
    record: str,
    source: str | Path,
    offset: int = 0,
    kernels=None,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Base codes (0-3 ACGT, 4 ambiguous) of a chunk of ASCII bases (into ``out`` if given); an
    invalid character is an error naming the record and its 1-based position (``offset``: the
    chunk's start in the record). ``kernels``: :class:`biocnn.deepbind.native.Kernels`, which
    look up and validate in one pass; without them NumPy does."""
    arr = np.frombuffer(raw, dtype=np.uint8)
    if kernels is not None:
        codes = np.empty(len(arr), np.uint8) if out is None else out
        bad = kernels.encode(arr, CODES, codes)
    else:
        codes = CODES[arr]
        if out is not None:
            out[:] = codes
        hits = np.flatnonzero(codes == 255)
        bad = int(hits[0]) if hits.size else -1
    if bad >= 0:
        char = bytes(arr[bad : bad + 1]).decode("latin-1")
        raise InputError(source, f"record {record!r}: invalid character {char!r} at position {offset + bad + 1}")
    return codes


def stream_records(path: str | Path) -> Iterator[tuple[str, Iterator[bytes]]]:
    """Yield ``(record id, iterator over pieces of its sequence)``, pieces being ASCII bases with
    line breaks removed. The file is read in blocks of a few MB (plain or gzip, detected from its
    first bytes), so a chromosome is never held in memory whole."""
    path = Path(path)
    with open_binary(path) as fh:
        reader = _BlockReader(fh)
        first = reader.header()
        if first is None:
            raise InputError(path, "file is empty")
        if not first.startswith(b">"):
            raise InputError(path, "not a FASTA file (the first character should be '>')")
        header = first
        while header is not None:
            fields = header[1:].split()
            name = fields[0].decode("utf-8", errors="replace") if fields else "unnamed"
            body = reader.sequence()
            yield name, body
            for _ in body:  # drain pieces the caller did not read
                pass
            header = reader.header()


def _bases(piece: bytes) -> bytes:
    """``piece`` without line breaks and blanks (``replace`` is several times faster than
    ``translate``; carriage returns, spaces and tabs are rare, so looked for first)."""
    piece = piece.replace(b"\n", b"")
    if b"\r" in piece or b" " in piece or b"\t" in piece:
        piece = piece.translate(None, b" \t\r")
    return piece


class _BlockReader:
    """Splits a binary FASTA stream, read in large blocks, into header lines and sequence pieces."""

    def __init__(self, fh):
        self.fh, self.buf, self.eof = fh, b"", False
        self.line_start = True  # the byte before ``buf`` ended a line

    def _fill(self) -> bool:
        # Read errors (a truncated gzip, a failing disk) come as InputError from open_binary.
        block = b"" if self.eof else self.fh.read(_READ_BLOCK)
        self.eof = not block
        self.buf = self.buf + block if self.buf else block
        return bool(block)

    def header(self) -> bytes | None:
        """The next header line (or the first line of the file), ``None`` at the end."""
        while True:
            end = self.buf.find(b"\n")
            if end >= 0:
                line, self.buf = self.buf[:end], self.buf[end + 1 :]
                self.line_start = True
                return line.rstrip(b"\r")
            if not self._fill():
                line, self.buf = self.buf, b""
                return line.rstrip(b"\r") if line.strip() else None

    def sequence(self) -> Iterator[bytes]:
        """Pieces of the current record's sequence up to the next header line (left in the buffer)."""
        while True:
            if not self.buf and not self._fill():
                return
            if self.line_start and self.buf.startswith(b">"):  # the next header
                return
            # A header is a '>' after a line break. ('>' is rare: a one-byte search is fast,
            # "\n>" is not, line breaks being everywhere.)
            end = self.buf.find(b">", 1)
            while end > 0 and self.buf[end - 1] != 10:  # a '>' inside a line: an invalid base later
                end = self.buf.find(b">", end + 1)
            if end > 0:
                piece, self.buf = self.buf[:end], self.buf[end:]
                self.line_start = True
                yield _bases(piece)
                return
            piece, self.buf = self.buf, b""
            self.line_start = piece.endswith(b"\n")
            yield _bases(piece)
