"""Genome-scan outputs written as windows arrive: a bedGraph of window scores and a BED of
merged peaks (runs of overlapping windows above a threshold, with their best score)."""

from __future__ import annotations

import ctypes

import numpy as np


def _start_writeback(fd: int) -> None:
    """Ask the kernel to start writing the file's dirty pages to disk now, without waiting
    (Linux ``sync_file_range``): the ``fsync`` that makes the output durable at the end then has
    little left to wait for. A no-op elsewhere."""
    global _SYNC_FILE_RANGE
    if _SYNC_FILE_RANGE is None:
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            _SYNC_FILE_RANGE = libc.sync_file_range
            _SYNC_FILE_RANGE.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
        except (OSError, AttributeError):
            _SYNC_FILE_RANGE = False
    if _SYNC_FILE_RANGE:
        _SYNC_FILE_RANGE(fd, 0, 0, 2)  # SYNC_FILE_RANGE_WRITE: start write-out of the whole file


_SYNC_FILE_RANGE = None
# Write-out of a bedGraph is started once this many bytes were written since the last start (not
# after every batch: a many-model scan writes small batches to many files).
WRITEBACK_BYTES = 1 << 20


class TextBuffer:
    """Bytes for formatted lines, reused from batch to batch (a fresh buffer per batch costs page
    faults); writers that write one at a time share one (a many-model scan: one for all models,
    kept in cache, instead of a megabyte per model)."""

    def __init__(self):
        self.array = np.empty(0, np.uint8)

    def get(self, size: int) -> np.ndarray:
        """The buffer, at least ``size`` bytes."""
        if len(self.array) < size:
            self.array = np.empty(size, np.uint8)
        return self.array


class TrackWriter:
    """bedGraph + merged-peak BED output, written as windows arrive."""

    def __init__(
        self, bedgraph, bed, window: int, stride: int, threshold: float, kernels=None, text: TextBuffer | None = None
    ):
        """``kernels``: :class:`biocnn.deepbind.native.Kernels` format the bedGraph lines (the same
        bytes as Python's formatting, faster); ``None``: Python formats them. ``text``: the buffer
        they are formatted in, shared with other writers that never write at the same time."""
        self.bg, self.bed, self.kernels = bedgraph, bed, kernels
        self.window, self.stride, self.threshold = window, stride, threshold
        self.offset = (window - stride) // 2 if stride < window else 0
        self.span = min(stride, window)
        self.peak: list | None = None
        self.n_peaks = 0
        self.uninformative = 0  # masked windows (no A/C/G/T base): in neither file
        self._text = text or TextBuffer()
        self._unsynced = 0  # bedGraph bytes written since the last start of write-out

    def windows(self, chrom: str, starts: np.ndarray, scores: np.ndarray, ends: np.ndarray | None = None) -> None:
        """Write windows starting at ``starts`` (ending at ``ends``, default ``starts + window``).
        ``scores`` may be a masked array: a masked window has no informative base (only N and
        other ambiguity codes), and is counted in :attr:`uninformative`, not written, never a peak."""
        if np.ma.isMaskedArray(scores):
            keep = ~np.ma.getmaskarray(scores)
            self.uninformative += int(keep.size - np.count_nonzero(keep))
            starts, scores = starts[keep], np.asarray(scores.data)[keep]
            ends = None if ends is None else ends[keep]
            if not scores.size:
                return
        lo = starts + self.offset
        hi = lo + self.span if ends is None else ends
        self._bedgraph(chrom, lo, hi, scores)
        win_end = starts + self.window if ends is None else ends
        above = np.flatnonzero(scores > self.threshold)
        if not above.size:
            return
        # Runs of windows above the threshold that overlap (or touch) one another, found with
        # array operations; only the runs, not the windows, are visited in Python.
        if above.size == len(scores):  # every window (common with a low threshold): no copies
            a, e, v = starts, win_end, scores
        else:
            a, e, v = starts[above], win_end[above], scores[above]
        # Equal-length windows end in order; a record's short last window may not.
        reach = e if ends is None else np.maximum.accumulate(e)
        breaks = np.flatnonzero(a[1:] > reach[:-1]) + 1
        first = np.r_[0, breaks]
        run_end = np.maximum.reduceat(e, first)
        run_best = np.maximum.reduceat(v, first)
        run_start = a[first].tolist()
        run_end, run_best = run_end.tolist(), run_best.tolist()
        i = 0
        if self.peak is not None and self.peak[0] == chrom and run_start[0] <= self.peak[2]:
            # the first run continues the peak left open by the last batch
            self.peak[2], self.peak[3] = max(self.peak[2], run_end[0]), max(self.peak[3], run_best[0])
            i = 1
        if i == len(run_start):
            return
        self.flush()  # the open peak ends before this batch's next run
        last = len(run_start) - 1  # the last run stays open: the next batch may continue it
        if last > i:  # the runs in between are whole peaks: one write for all of them
            self.bed.write(
                "".join(
                    f"{chrom}\t{start}\t{end}\tpeak{n}\t{best:.4f}\n"
                    for n, start, end, best in zip(
                        range(self.n_peaks + 1, self.n_peaks + 1 + last - i),
                        run_start[i:last],
                        run_end[i:last],
                        run_best[i:last],
                    )
                )
            )
            self.n_peaks += last - i
        self.peak = [chrom, run_start[last], run_end[last], run_best[last]]

    def _bedgraph(self, chrom: str, lo: np.ndarray, hi: np.ndarray, scores: np.ndarray) -> None:
        if self.kernels is None:
            self.bg.write(
                "".join(
                    f"{chrom}\t{a}\t{b}\t{v:.4f}\n" for a, b, v in zip(lo.tolist(), hi.tolist(), scores.tolist())
                ).encode()
            )
            return
        name = chrom.encode()
        lo, hi = np.ascontiguousarray(lo, np.int64), np.ascontiguousarray(hi, np.int64)
        scores = np.ascontiguousarray(scores, np.float32)
        size = len(lo) * (len(name) + 128)  # the C formatter's bound per line
        text = self._text.get(size)
        n = self.kernels.bedgraph(name, lo, hi, scores, text)
        self.bg.write(memoryview(text)[:n])
        self._unsynced += n
        if self._unsynced >= WRITEBACK_BYTES:
            self.bg.flush()
            _start_writeback(self.bg.fileno())
            self._unsynced = 0

    def flush(self) -> None:
        if self.peak is not None:
            self.n_peaks += 1
            chrom, a, e, v = self.peak
            self.bed.write(f"{chrom}\t{a}\t{e}\tpeak{self.n_peaks}\t{v:.4f}\n")
            self.peak = None
