"""A streamed FASTA cut into the scan's jobs: batches of overlapping windows' bases, and each
record's end, in file order, each base copied at most once."""

from __future__ import annotations

from collections import deque
from pathlib import Path

import numpy as np

from biocnn.errors import InputError
from biocnn.io.fasta_stream import stream_records


def scan_jobs(fasta: str | Path, take: int, step: int, window: int, motif_len: int, stats: dict):
    """The scan's jobs in file order: ``(bases, record, offset, False)`` for a batch of windows
    starting at ``offset``, then per record ``(short, record, offset, True)``, its end: ``short``
    a record shorter than a window but not than a motif (scored whole, as the model would score
    it), else None. The windows are those at 0, stride, 2 x stride, ... that fit in the record,
    whatever the batch size (``take``, ``step``): the bases after a longer record's last window
    are not scored. Counts bases, records and too-short records in ``stats``; a record name seen
    twice is an InputError (its rows would overlap the first one's in the bedGraph)."""
    seen: set[str] = set()
    for name, pieces in stream_records(fasta):
        if name in seen:
            raise InputError(
                fasta, f"record name {name!r} appears more than once: its bedGraph rows would overlap (rename one)"
            )
        seen.add(name)
        stats["records"] += 1
        for bases, offset, rest in record_batches(_counted(pieces, stats), take, step):
            if not rest:
                yield bases, name, offset, False
        if len(bases) >= window:
            yield bases, name, offset, False
        elif offset == 0 and len(bases) < motif_len:
            stats["short_records"].append(name)
        whole = offset == 0 and window > len(bases) >= motif_len  # the whole record is shorter than a window
        yield (bases if whole else None), name, offset, True


def record_batches(pieces, take: int, step: int):
    """Split a record given as pieces of bases into batches: yields ``(bases, offset, False)`` for
    bases ``[offset, offset + take)``, offset = 0, step, 2 * step, ..., then once
    ``(bases, offset, True)`` with the bases from ``offset`` to the end (fewer than ``take``).

    Each base is copied at most once: a batch inside one piece is a view of it, one spanning
    pieces is joined. ``step > take`` (windows farther apart than a window) skips the bases in
    between, also when they lie in pieces not read yet."""
    held: deque = deque()  # memoryviews of the bases from ``offset`` on, in order
    size = offset = skip = 0  # skip: bases still to drop from the next pieces
    for piece in pieces:
        view = memoryview(piece)
        if skip:
            cut = min(skip, len(view))
            view, skip = view[cut:], skip - cut
        if len(view):
            held.append(view)
            size += len(view)
        while size >= take:
            first = held[0]
            yield (first[:take] if len(first) >= take else _join(held, take)), offset, False
            skip = _drop(held, step)
            size, offset = max(size - step, 0), offset + step
    yield _join(held, size), offset, True


def _counted(pieces, stats: dict):
    """The pieces, their bases added to ``stats["bp"]`` as they are read."""
    for piece in pieces:
        stats["bp"] += len(piece)
        yield piece


def _join(held: deque, n: int) -> bytes:
    """The first ``n`` bases of ``held`` as one bytes object."""
    parts = []
    for view in held:
        if n <= 0:
            break
        parts.append(view[:n])
        n -= len(parts[-1])
    return b"".join(parts)


def _drop(held: deque, n: int) -> int:
    """Drop the first ``n`` bases of ``held``; returns how many more there were to drop."""
    while n and held:
        if len(held[0]) <= n:
            n -= len(held.popleft())
        else:
            held[0] = held[0][n:]
            n = 0
    return n


def uninformative_windows(codes: np.ndarray, n_windows: int, window: int, stride: int) -> np.ndarray:
    """Indices of the windows (at 0, stride, ...) of a batch's base ``codes`` that hold no A, C, G
    or T: only N and other ambiguity codes, which every model scores as one constant, not as
    binding. Cheap when the batch holds no ambiguity code at all (the common case)."""
    if n_windows < 1 or int(codes.max(initial=0)) < 4:
        return np.zeros(0, np.int64)
    known = np.zeros(len(codes) + 1, np.int64)
    np.cumsum(codes < 4, out=known[1:])
    starts = np.arange(n_windows, dtype=np.int64) * stride
    return np.flatnonzero(known[starts + window] == known[starts])


def mask_uninformative(scores: np.ndarray, codes: np.ndarray, window: int, stride: int) -> np.ndarray:
    """``scores`` of the windows of ``codes``, masked where a window has no A/C/G/T base (see
    :func:`uninformative_windows`; :class:`~biocnn.deepbind.tracks.TrackWriter` leaves those
    out and counts them); the plain array when there is none."""
    idx = uninformative_windows(codes, len(scores), window, stride)
    if not idx.size:
        return scores
    mask = np.zeros(len(scores), bool)
    mask[idx] = True
    return np.ma.masked_array(scores, mask)
