"""Genome scans: score every window of a FASTA of any size, streamed with constant memory.

Scoring windows one by one would run the convolution ``window / stride`` times over every
base. Instead the motif detectors run once over a whole chunk of sequence, and each window's
pooled features are read off that one activation track:

* detector positions that lie fully inside a window are the chunk convolution's outputs at
  the window's positions (a strided max/avg pool of the track);
* the ``motif_len - 1`` positions at each end of a window overlap DeepBind's 0.25 padding;
  they are computed exactly from the window's first and last ``motif_len - 1`` bases padded
  with 0.25 (a small batched convolution).

So a window's score equals ``model(window)`` exactly (tested), at about the cost of one
convolution pass over the genome. Both strands come from the same pass: the reverse
strand's detectors are the forward kernels reverse-complemented (flipped along bases and
positions), stacked as extra output channels.

Backends: ``native`` (CPU default): C kernels (:mod:`biocnn.deepbind.native`) that sum 4-mer
table rows instead of multiplying one-hot columns, pool per stride-long segment and run the
dense head (a scan scores one batch per thread; :meth:`WindowScorer.score` on one chunk splits
its windows over ``torch.get_num_threads()`` threads); ``lookup``: the numba
kernels of :mod:`biocnn.deepbind.fastscan` (used when no C compiler is found); ``torch``
(CUDA default): dense convolutions.

Streaming: the FASTA is read in blocks of a few MB (:mod:`biocnn.io.fasta_stream`) and cut into
batches of ``chunk`` bp; worker threads (one per core with the C kernels) each read a batch,
encode and score it, and write every scored batch that is next in file order through
:class:`biocnn.deepbind.tracks.TrackWriter` (:class:`_Pipeline`), so a few batches at most are
in memory whatever the chromosome or genome length.

Outputs: ``PREFIX.bedgraph`` (one score per window, on its central ``stride`` bp so the
intervals do not overlap), ``PREFIX.bed`` (peaks: runs of windows whose score exceeds the
threshold, merged, with the best score) and ``PREFIX.json`` (counts, bp/s).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from biocnn.deepbind.model import PAD_VALUE, DeepBind
from biocnn.errors import InputError
from biocnn.deepbind.tracks import TrackWriter
from biocnn.io.atomic import atomic_open, write_json
from biocnn.io.fasta_stream import chunk_codes, stream_records
from biocnn.io.sequences import _ONE_HOT

log = logging.getLogger(__name__)

ROW = 8192  # positions per row of the batched chunk convolution (rows parallelise over cores)
_NATIVE_BLOCK = 128  # windows per block of the C kernel (its scratch memory is a few per-window vectors)


def _head_weights(mlp: torch.nn.Sequential) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """(w1t (features, hidden), b1, w2, b2) of a binding head ``[Dropout, Linear, ReLU,] Dropout,
    Linear(-> 1)`` for the C kernel; hidden units are padded with zero units to a multiple of 16
    (their ReLU output is 0 and their output weight 0). Without a hidden layer w1t is empty."""
    linear = [layer for layer in mlp if isinstance(layer, torch.nn.Linear)]
    others = [layer for layer in mlp if not isinstance(layer, (torch.nn.Linear, torch.nn.ReLU, torch.nn.Dropout))]
    if others or len(linear) not in (1, 2) or linear[-1].out_features != 1:
        raise TypeError(f"the native scan supports DeepBind's head (optional hidden layer, one output), not {mlp}")
    numpy = lambda t: t.detach().cpu().numpy().astype(np.float32)  # noqa: E731
    out = linear[-1]
    if len(linear) == 1:
        return np.zeros((out.in_features, 0), np.float32), np.zeros(0, np.float32), _aligned(numpy(out.weight)[0]), \
            float(out.bias.detach())
    hidden = linear[0]
    h = -(-hidden.out_features // 16) * 16
    pad = h - hidden.out_features
    w1t = np.pad(numpy(hidden.weight).T, [(0, 0), (0, pad)])
    return _aligned(w1t), _aligned(np.pad(numpy(hidden.bias), (0, pad))), _aligned(np.pad(numpy(out.weight)[0], (0, pad))), \
        float(out.bias.detach())


def _aligned(a: np.ndarray, align: int = 64) -> np.ndarray:
    """A C-contiguous float32 copy of ``a`` whose data starts on a cache-line boundary (a table row
    of 32 channels then spans 2 cache lines, not 3)."""
    a = np.ascontiguousarray(a, np.float32)
    raw = np.empty(a.nbytes + align, np.uint8)
    start = -raw.ctypes.data % align
    out = raw[start:start + a.nbytes].view(np.float32).reshape(a.shape)
    out[...] = a
    return out


class WindowScorer:
    """Scores all windows of a one-hot chunk with one convolution pass (see module docstring)."""

    def __init__(self, model: DeepBind, window: int, stride: int, backend: str = "auto"):
        k = model.motif_len
        if window < k:
            raise InputError("--window", f"window {window} bp is shorter than motif_len {k}")
        if stride < 1:
            raise InputError("--stride", "stride must be at least 1")
        self.model, self.window, self.stride, self.k = model.eval(), window, stride, k
        conv = model.motif_conv
        w, b = conv.weight.detach(), conv.bias.detach()
        if model.both_strands:
            w, b = torch.cat([w, w.flip(1).flip(2)]), torch.cat([b, b])
        self.weight, self.bias = w.contiguous(), b.contiguous()
        self.device = self.weight.device
        # CPU: table look-ups over the base codes (C kernels, or numba without a C compiler);
        # CUDA: dense convolutions (torch).
        if backend == "auto":
            backend = "torch" if self.device.type == "cuda" else "native"
        from biocnn.deepbind import native

        # The C helpers also encode bases and format bedGraph lines for the torch backend: in
        # Python those two capped a CUDA scan at about 20 Mbp/s (measured on an H100).
        self.lib = native.load()
        if backend == "native":
            widths = [self.weight.shape[0]] + [layer.out_features for layer in model.head.mlp
                                               if isinstance(layer, torch.nn.Linear)]
            if self.lib is None or max(widths) > native.MAX_CHANNELS or k > native.MAX_MOTIF_LEN:
                backend = "lookup"  # no C compiler, or larger than the kernel's registers allow
        self.backend = backend
        self._one_hot = torch.from_numpy(_ONE_HOT).to(self.device)  # (5 codes, 4 bases)
        if self.backend in ("native", "lookup"):
            from biocnn.deepbind.fastscan import lookup_tables, qmer_tables, quad_tables

            self.tables = lookup_tables(self.weight.cpu().numpy(), PAD_VALUE)
            self.bias_np = self.bias.cpu().numpy().astype(np.float32)
            if self.backend == "lookup":
                self.qtable = qmer_tables(self.tables[0])
            else:
                # Channels padded to a multiple of 16 (one vector register); padded channels stay 0.
                c = self.weight.shape[0]
                self.padded_channels = cp = -(-c // 16) * 16
                pad = lambda a: _aligned(np.pad(a, [(0, 0)] * (a.ndim - 1) + [(0, cp - c)]))  # noqa: E731
                self.ztab = _aligned(quad_tables(self.tables[0], cp))
                self.pad_vectors = pad(self.bias_np), pad(self.tables[1]), pad(self.tables[2])
                self.head_weights = _head_weights(model.head.mlp)
                self.threads = max(1, torch.get_num_threads())
                self.pool = ThreadPoolExecutor(self.threads) if self.threads > 1 else None
        self.num_motifs = model.num_motifs
        self._local = threading.local()  # a code buffer per thread (batches are scored in parallel)
        self.avg = model.head.pool == "maxavg"

    def one_hot(self, codes: np.ndarray) -> torch.Tensor:
        """One-hot ``(4, n)`` on the model's device from base codes: one byte per base crosses
        to the GPU, the expansion happens there."""
        return self._one_hot[torch.from_numpy(codes).to(self.device).long()].T.contiguous()

    def _track(self, x: torch.Tensor) -> torch.Tensor:
        """Rectified detector outputs at every fully-inside position: (channels, n - k + 1)."""
        k, n = self.k, x.shape[1]
        positions = n - k + 1
        rows = -(-positions // ROW)
        padded = F.pad(x, (0, rows * ROW + k - 1 - n))
        x_rows = padded.unfold(1, ROW + k - 1, ROW).permute(1, 0, 2)  # (rows, 4, ROW + k - 1)
        out = F.conv1d(x_rows, self.weight, self.bias).clamp_(min=0)  # (rows, C, ROW)
        return out.permute(1, 0, 2).reshape(out.shape[1], -1)[:, :positions]

    def _edges(self, x: torch.Tensor, n_windows: int) -> torch.Tensor:
        """Rectified outputs of the positions overlapping the padding: (windows, C, 2 * (k - 1))."""
        k, w, s = self.k, self.window, self.stride
        left = x.unfold(1, k - 1, s)[:, :n_windows].permute(1, 0, 2)
        right = x[:, w - k + 1:].unfold(1, k - 1, s)[:, :n_windows].permute(1, 0, 2)
        left = F.conv1d(F.pad(left, (k - 1, 0), value=PAD_VALUE), self.weight, self.bias)
        right = F.conv1d(F.pad(right, (0, k - 1), value=PAD_VALUE), self.weight, self.bias)
        return torch.cat([left, right], dim=2).clamp_(min=0)

    def _pool_torch(self, x: torch.Tensor, n_windows: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(max, sum) of rectified outputs per window and channel, with dense convolutions."""
        w, s, k = self.window, self.stride, self.k
        track = self._track(x[:, : (n_windows - 1) * s + w])
        inner = w - k + 1
        edges = self._edges(x, n_windows)
        pooled = torch.maximum(F.max_pool1d(track[None], inner, s)[0].T, edges.amax(2))
        total = F.avg_pool1d(track[None], inner, s)[0].T * inner + edges.sum(2) if self.avg else pooled
        return pooled, total

    def _pool_lookup(self, codes: np.ndarray, n_windows: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(max, sum) per window and channel with the one-hot look-up kernels."""
        from biocnn.deepbind.fastscan import detector_track, pool_windows, qmer_codes

        w, s, k = self.window, self.stride, self.k
        table, pad_left, pad_right = self.tables
        n_pos = (n_windows - 1) * s + w - k + 1
        track = np.empty((n_pos, table.shape[2]), np.float32)
        qcodes = qmer_codes(codes)
        detector_track(qcodes, self.qtable, codes, table, self.bias_np, n_pos, track)
        out_max = np.empty((n_windows, table.shape[2]), np.float32)
        out_sum = np.empty_like(out_max)
        pool_windows(qcodes, self.qtable, codes, track, table, self.bias_np, pad_left, pad_right, w, s, n_windows, out_max, out_sum)
        return torch.from_numpy(out_max), torch.from_numpy(out_sum)

    def _padded(self, n: int) -> tuple[np.ndarray, int]:
        """A code buffer for ``n`` bases with the margins the C kernel reads (valid codes, their
        values never matter), and the offset of base 0 in it. Reused from batch to batch: a
        fresh megabyte per batch costs page faults."""
        lead, tail = 3, 4 * ((self.k + 3) // 4) + 8
        buf = getattr(self._local, "buffer", None)
        if buf is None or len(buf) < lead + n + tail:
            buf = self._local.buffer = np.zeros(lead + n + tail, np.uint8)
        return buf, lead

    @property
    def parallel_batches(self) -> int:
        """How many batches may be scored at once: one per thread for the C kernels (each batch
        then runs on one thread), one otherwise."""
        return self.threads if self.backend == "native" else 1

    def score_bases(self, raw: bytes, record: str, source: str | Path, offset: int = 0,
                    split: bool = True) -> np.ndarray:
        """Scores (float32) of the windows of a chunk of ASCII bases; an invalid character is an
        InputError naming ``record`` and its position (``offset``: the chunk's start in it).
        ``split``: spread the chunk's windows over the scorer's threads (C kernels only)."""
        if self.backend != "native":
            codes = chunk_codes(raw, record, source, offset, self.lib)
            if self.backend == "torch":
                return self.score(self.one_hot(codes)).float().cpu().numpy()
            return self.score(codes).numpy()
        n = len(raw)
        n_windows = (n - self.window) // self.stride + 1
        if n_windows < 1:
            return np.zeros(0, np.float32)
        buf, lead = self._padded(n)  # the bases are encoded straight into the kernel's buffer
        # One thread: about 15 GB/s with AVX-512 VBMI, 1.6 GB/s without (a thread pool cost more).
        chunk_codes(raw, record, source, offset, self.lib, out=buf[lead:lead + n])
        return self._score_native(buf, lead, n_windows, split)

    def _score_native(self, buf: np.ndarray, lead: int, n_windows: int, split: bool = True) -> np.ndarray:
        """Window scores with the C kernels (pooling and the head in one call), windows split over
        threads. ``buf``: base codes from ``lead`` on, with the margins of :meth:`_padded`."""
        scores = np.empty(n_windows, np.float32)
        bias, pad_left, pad_right = self.pad_vectors
        w1t, b1, w2, b2 = self.head_weights
        strands = 2 if self.model.both_strands else 1

        def run(a: int, b: int) -> None:
            self.lib.biocnn_score(buf.ctypes.data + lead, self.ztab.ctypes.data, bias.ctypes.data,
                                  pad_left.ctypes.data, pad_right.ctypes.data, self.padded_channels, self.k,
                                  self.window, self.stride, a, b, _NATIVE_BLOCK, self.num_motifs, strands, self.avg,
                                  w1t.ctypes.data, b1.ctypes.data, w1t.shape[1], w2.ctypes.data, b2,
                                  scores[a:].ctypes.data)

        if self.pool is None or not split or n_windows < 2 * _NATIVE_BLOCK:
            run(0, n_windows)
        else:  # ctypes releases the GIL: the threads run the kernels in parallel
            parts = np.linspace(0, n_windows, self.threads + 1).astype(int).tolist()
            list(self.pool.map(run, parts[:-1], parts[1:]))
        return scores

    @torch.no_grad()
    def score(self, x: torch.Tensor | np.ndarray) -> torch.Tensor:
        """Scores of windows starting at 0, stride, ... that fit in ``x``.

        ``x`` is one-hot (4, n) for the torch backend, base codes (n,) uint8 for ``native`` and
        ``lookup``.
        """
        w, s, k = self.window, self.stride, self.k
        n_windows = (x.shape[-1] - w) // s + 1
        if n_windows < 1:
            return torch.zeros(0)
        if self.backend == "native":
            buf, lead = self._padded(x.shape[-1])
            buf[lead:lead + x.shape[-1]] = x
            return torch.from_numpy(self._score_native(buf, lead, n_windows))
        if self.backend == "lookup":
            pooled, total = self._pool_lookup(np.ascontiguousarray(x), n_windows)
        else:
            pooled, total = self._pool_torch(x, n_windows)
        mean = total / (w + k - 1)
        m = self.num_motifs
        strands = [slice(0, m), slice(m, 2 * m)] if self.model.both_strands else [slice(0, m)]
        scores = []
        for ch in strands:
            feats = torch.cat([mean[:, ch], pooled[:, ch]], 1) if self.avg else pooled[:, ch]
            scores.append(self._head(feats))
        return torch.stack(scores).amax(0)

    def _head(self, feats: torch.Tensor) -> torch.Tensor:
        """The binding head's dense layers (eval mode: dropout is the identity). On CPU in
        NumPy: for a few thousand rows it avoids torch's per-call thread-pool overhead."""
        if self.backend == "torch":
            return self.model.head.mlp(feats).squeeze(-1)
        x = np.ascontiguousarray(feats.numpy())
        for layer in self.model.head.mlp:
            if isinstance(layer, torch.nn.Linear):
                x = x @ layer.weight.detach().numpy().T + layer.bias.detach().numpy()
            elif isinstance(layer, torch.nn.ReLU):
                x = np.maximum(x, 0)
        return torch.from_numpy(np.ascontiguousarray(x[:, 0]))


def scan_fasta(model: DeepBind, fasta: str | Path, out_prefix: str | Path, window: int = 101, stride: int = 50,
               threshold: float = 0.0, chunk: int = 1_000_000, progress_every: float = 10.0,
               backend: str = "auto") -> dict:
    """Scan every record of ``fasta``; returns counts and speed (also written to PREFIX.json)."""
    scorer = WindowScorer(model, window, stride, backend)
    per_chunk = max(1, chunk // stride)  # windows scored per batch
    out_prefix = str(out_prefix)
    stats = {"bp": 0, "windows": 0, "records": 0, "short_records": []}
    start = time.perf_counter()
    with atomic_open(out_prefix + ".bedgraph", "wb") as bg, atomic_open(out_prefix + ".bed") as bed:
        writer = TrackWriter(bg, bed, window, stride, threshold, scorer.lib)
        jobs = _scan_jobs(fasta, (per_chunk - 1) * stride + window, per_chunk * stride, window, model.motif_len, stats)
        _Pipeline(scorer, writer, jobs, stats, fasta, progress_every).run()
    seconds = time.perf_counter() - start
    stats.update({"peaks": writer.n_peaks, "seconds": seconds, "bp_per_s": stats["bp"] / max(seconds, 1e-9),
                  "window": window, "stride": stride, "threshold": threshold, "backend": scorer.backend})
    if stats["short_records"]:
        log.warning("%s: %d records shorter than motif_len were not scored: %s", fasta,
                    len(stats["short_records"]), ", ".join(stats["short_records"][:5]))
    write_json(out_prefix + ".json", stats)
    return stats


def _scan_jobs(fasta: str | Path, take: int, step: int, window: int, motif_len: int, stats: dict):
    """The scan's jobs in file order: ``(bases, record, offset, False)`` for a batch of windows
    starting at ``offset``, then per record ``(short, record, offset, True)``, its end: ``short``
    the bases left over that are shorter than a window but not than a motif (scored whole, as the
    model would score them), else None. Counts bases, records and too-short records in ``stats``."""
    for name, pieces in stream_records(fasta):
        stats["records"] += 1
        for bases, offset, rest in record_batches(_counted(pieces, stats), take, step):
            if not rest:
                yield bases, name, offset, False
        if len(bases) >= window:
            yield bases, name, offset, False
        elif len(bases) < motif_len and (bases or offset == 0):
            stats["short_records"].append(name)
        yield (bases if window > len(bases) >= motif_len else None), name, offset, True


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


class _Pipeline:
    """Runs the scan's jobs on a few worker threads, with no separate reader or writer thread:
    each worker reads the next job (in turn), scores it, and the worker that finds the oldest
    unwritten job done writes it and every done job after it, in file order.

    Why no reader and writer threads: on two cores they shared a core with one of the two scoring
    threads, which then scored its batches about 25% slower than the other (measured per batch);
    with the workers reading and writing for themselves each core runs one thread and the two
    share all the work evenly (+13% Mbp/s). At most ``2 x workers`` jobs are read and not yet
    written, so memory stays bounded whatever the genome. Scoring runs ``parallel_batches`` jobs
    at once (one per thread with the C kernels); with other backends one job is scored while
    another worker reads or writes. A failure stops the reading; the first failure in file order
    is raised once the workers have stopped."""

    def __init__(self, scorer: WindowScorer, writer: TrackWriter, jobs, stats: dict, source: str | Path,
                 progress_every: float):
        self.scorer, self.writer, self.jobs, self.stats, self.source = scorer, writer, jobs, stats, source
        self.progress_every, self.started = progress_every, time.perf_counter()
        self.last_report = self.started
        self.workers = max(2, scorer.parallel_batches)
        self.limit = 2 * self.workers
        self.scoring = threading.Semaphore(scorer.parallel_batches)
        self.reading = threading.Lock()  # one reader of ``jobs`` at a time
        self.lock = threading.Lock()  # guards the fields below
        self.changed = threading.Condition(self.lock)
        self.next_read = self.next_write = 0  # job numbers, in file order
        self.done: dict = {}  # number -> (job, scores) scored but waiting for earlier jobs to be written
        self.writing = False  # a worker is writing done jobs
        self.stop = False  # no more jobs (all read, or a failure)
        self.failures: list = []  # (job number, exception)

    def run(self) -> None:
        helpers = [threading.Thread(target=self._work, name=f"scan-{i}", daemon=True)
                   for i in range(1, self.workers)]
        for thread in helpers:
            thread.start()
        try:
            self._work()
        finally:
            with self.lock:  # the main thread may leave early (an interrupt): stop the helpers too
                self.stop = True
                self.changed.notify_all()
            for thread in helpers:
                thread.join()
        if self.failures:
            raise min(self.failures, key=lambda f: f[0])[1]
        assert self.next_write == self.next_read and not self.done, "scan jobs left unwritten"

    def _work(self) -> None:
        while True:
            with self.reading:
                with self.changed:  # bounded memory: wait while the writing lags (holding the
                    # reading lock, so no other worker reads past the limit meanwhile)
                    while self.next_read - self.next_write >= self.limit and not self.stop:
                        self.changed.wait()
                    if self.stop:
                        return
                number = self.next_read
                try:
                    job = next(self.jobs, None)
                except Exception as exc:  # a read error (I/O, gzip): fails at its place in the file
                    self._fail(number, exc)
                    return
                with self.lock:
                    if job is None:
                        self.stop = True
                        self.changed.notify_all()
                        return
                    self.next_read += 1
            try:
                with self.scoring:
                    scores = self._score(*job)
            except Exception as exc:
                self._fail(number, exc)
                return
            with self.lock:
                self.done[number] = job, scores
                if self.writing:  # the writing worker will find it
                    continue
                self.writing = True
            self._write_done()

    def _fail(self, number: int, exc: Exception) -> None:
        with self.lock:
            self.failures.append((number, exc))
            self.stop = True
            self.changed.notify_all()

    def _write_done(self) -> None:
        """Write done jobs in order while the next one is done (only one worker writes at a time)."""
        while True:
            with self.lock:
                item = None if self.failures else self.done.pop(self.next_write, None)
                if item is None:
                    self.writing = False
                    return
            try:
                self._write(*item)
            except Exception as exc:
                self._fail(self.next_write, exc)
                with self.lock:
                    self.writing = False
                return
            with self.lock:
                self.next_write += 1
                self.changed.notify_all()

    def _score(self, bases: bytes | None, name: str, offset: int, end: bool) -> np.ndarray | None:
        if not end:
            split = self.scorer.parallel_batches == 1  # one batch at a time: its windows use all threads
            return self.scorer.score_bases(bases, name, self.source, offset, split)
        if bases is None:
            return None
        x = self.scorer.one_hot(chunk_codes(bases, name, self.source, offset, self.scorer.lib))[None]
        with torch.no_grad():
            return self.scorer.model(x).float().cpu().numpy()

    def _write(self, job: tuple, scores: np.ndarray | None) -> None:
        bases, name, offset, end = job
        if not end:
            starts = offset + np.arange(len(scores), dtype=np.int64) * self.scorer.stride
            self.writer.windows(name, starts, scores)
            self.stats["windows"] += len(scores)
            now = time.perf_counter()
            if now - self.last_report > self.progress_every:
                log.info("scanned %d bp, %.2f Mbp/s", self.stats["bp"], self.stats["bp"] / (now - self.started) / 1e6)
                self.last_report = now
            return
        if scores is not None:  # the record's short rest, scored whole
            self.writer.windows(name, np.array([offset]), scores, np.array([offset + len(bases)]))
            self.stats["windows"] += 1
        self.writer.flush()  # close the record's last peak


def run_scan(model_dir: str | Path, fasta: str | Path, out_prefix: str | Path, window: int = 101, stride: int = 50,
             threshold: float = 0.0, chunk: int = 1_000_000) -> dict:
    """The ``scan`` verb: load the model (on CUDA when available) and scan."""
    from biocnn.checkpoint import load_model
    from biocnn.device import select_device

    model, _ = load_model(model_dir, select_device("auto"))
    return scan_fasta(model, fasta, out_prefix, window, stride, threshold, chunk)
