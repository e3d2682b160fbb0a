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

Outputs: ``PREFIX.bedgraph`` (one score per window, on its central ``stride`` bp so the
intervals do not overlap), ``PREFIX.bed`` (peaks: runs of windows whose score exceeds the
threshold, merged, with the best score) and ``PREFIX.json`` (counts, bp/s).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F

from biocnn.binding.model import PAD_VALUE, DeepBind
from biocnn.errors import InputError
from biocnn.io.atomic import atomic_open, write_json
from biocnn.io.sequences import _CODES, _ONE_HOT, open_text

log = logging.getLogger(__name__)

ROW = 8192  # positions per row of the batched chunk convolution (rows parallelise over cores)


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
        # CPU: table look-ups over the base codes (numba); CUDA: dense convolutions (torch).
        self.backend = ("torch" if self.device.type == "cuda" else "lookup") if backend == "auto" else backend
        if self.backend == "lookup":
            from biocnn.binding.fastscan import lookup_tables, qmer_tables

            self.tables = lookup_tables(self.weight.cpu().numpy(), PAD_VALUE)
            self.qtable = qmer_tables(self.tables[0])
            self.bias_np = self.bias.cpu().numpy().astype(np.float32)
        self.num_motifs = model.num_motifs
        self.avg = model.head.pool == "maxavg"

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
        from biocnn.binding.fastscan import detector_track, pool_windows, qmer_codes

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

    @torch.no_grad()
    def score(self, x: torch.Tensor | np.ndarray) -> torch.Tensor:
        """Scores of windows starting at 0, stride, ... that fit in ``x``.

        ``x`` is one-hot (4, n) for the torch backend, base codes (n,) uint8 for ``lookup``.
        """
        w, s, k = self.window, self.stride, self.k
        n_windows = (x.shape[-1] - w) // s + 1
        if n_windows < 1:
            return torch.zeros(0)
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
        if self.backend != "lookup":
            return self.model.head.mlp(feats).squeeze(-1)
        x = feats.numpy()
        for layer in self.model.head.mlp:
            if isinstance(layer, torch.nn.Linear):
                x = x @ layer.weight.detach().numpy().T + layer.bias.detach().numpy()
            elif isinstance(layer, torch.nn.ReLU):
                x = np.maximum(x, 0)
        return torch.from_numpy(np.ascontiguousarray(x[:, 0]))


def chunk_codes(seq: str, record: str, source: str | Path) -> np.ndarray:
    """Base codes (0-3 ACGT, 4 ambiguous) of a chunk; an invalid character is an error."""
    raw = np.frombuffer(seq.encode("ascii", errors="replace"), dtype=np.uint8)
    c = _CODES[raw]
    bad = np.flatnonzero(c == 255)
    if bad.size:
        raise InputError(source, f"record {record!r}: invalid character {seq[bad[0]]!r} in the chunk at "
                                 f"offset {int(bad[0]) + 1}")
    return c


def encode_chunk(seq: str, record: str, source: str | Path) -> torch.Tensor:
    """One-hot (4, n) of a chunk; an invalid character names the record and its position."""
    return torch.from_numpy(_ONE_HOT[chunk_codes(seq, record, source)].T.copy())


def stream_records(path: str | Path) -> Iterator[tuple[str, Iterator[str]]]:
    """Yield ``(record id, iterator over its sequence lines)`` reading the file line by line,
    so a chromosome is never held in memory whole."""
    fh = open_text(path)
    state = {"header": None, "done": False}

    def lines() -> Iterator[str]:
        for line in fh:
            if line.startswith(">"):
                state["header"] = line
                return
            yield line.strip()
        state["done"] = True

    with fh:
        first = fh.readline()
        if not first:
            raise InputError(path, "file is empty")
        if not first.startswith(">"):
            raise InputError(path, "not a FASTA file (the first character should be '>')")
        state["header"] = first
        while not state["done"] and state["header"] is not None:
            header, state["header"] = state["header"], None
            name = header[1:].split()[0] if header[1:].split() else "unnamed"
            body = lines()
            yield name, body
            for _ in body:  # drain lines the caller did not read
                pass


class _Writer:
    """bedGraph + merged-peak BED output, written as windows arrive."""

    def __init__(self, bedgraph, bed, window: int, stride: int, threshold: float):
        self.bg, self.bed = bedgraph, bed
        self.window, self.stride, self.threshold = window, stride, threshold
        self.offset = (window - stride) // 2 if stride < window else 0
        self.span = min(stride, window)
        self.peak: list | None = None
        self.n_peaks = 0

    def windows(self, chrom: str, starts: np.ndarray, scores: np.ndarray, ends: np.ndarray | None = None) -> None:
        lo = starts + self.offset
        hi = lo + self.span if ends is None else ends
        self.bg.write("".join(f"{chrom}\t{a}\t{b}\t{v:.4f}\n" for a, b, v in zip(lo.tolist(), hi.tolist(),
                                                                                   scores.tolist())))
        win_end = starts + self.window if ends is None else ends
        above = np.flatnonzero(scores > self.threshold)
        if not above.size:
            return
        # Runs of windows above the threshold that overlap (or touch) one another, found with
        # array operations; only the runs, not the windows, are visited in Python.
        a, e, v = starts[above], win_end[above], scores[above]
        breaks = np.flatnonzero(a[1:] > np.maximum.accumulate(e)[:-1]) + 1
        for lo_i, hi_i in zip(np.r_[0, breaks].tolist(), np.r_[breaks, len(a)].tolist()):
            run = (int(a[lo_i]), int(e[lo_i:hi_i].max()), float(v[lo_i:hi_i].max()))
            if self.peak is not None and self.peak[0] == chrom and run[0] <= self.peak[2]:
                self.peak[2] = max(self.peak[2], run[1])
                self.peak[3] = max(self.peak[3], run[2])
            else:
                self.flush()
                self.peak = [chrom, *run]

    def flush(self) -> None:
        if self.peak is not None:
            self.n_peaks += 1
            chrom, a, e, v = self.peak
            self.bed.write(f"{chrom}\t{a}\t{e}\tpeak{self.n_peaks}\t{v:.4f}\n")
            self.peak = None


def scan_fasta(model: DeepBind, fasta: str | Path, out_prefix: str | Path, window: int = 101, stride: int = 50,
               threshold: float = 0.0, chunk: int = 1_000_000, progress_every: float = 10.0) -> dict:
    """Scan every record of ``fasta``; returns counts and speed (also written to PREFIX.json)."""
    scorer = WindowScorer(model, window, stride)
    per_chunk = max(1, chunk // stride)  # windows scored per batch
    take = (per_chunk - 1) * stride + window
    out_prefix = str(out_prefix)
    stats = {"bp": 0, "windows": 0, "records": 0, "short_records": []}
    start = last_report = time.perf_counter()
    with atomic_open(out_prefix + ".bedgraph") as bg, atomic_open(out_prefix + ".bed") as bed:
        writer = _Writer(bg, bed, window, stride, threshold)
        for name, lines in stream_records(fasta):
            stats["records"] += 1
            pieces, pending, offset = [], 0, 0
            for line in lines:
                pieces.append(line)
                pending += len(line)
                stats["bp"] += len(line)
                if pending < take:
                    continue
                # Joining only when a batch is full keeps the buffering linear in the genome size.
                buf = "".join(pieces)
                while len(buf) >= take:
                    _score_into(writer, scorer, buf[:take], name, offset, fasta, stats)
                    buf, offset = buf[per_chunk * stride:], offset + per_chunk * stride
                pieces, pending = [buf], len(buf)
                now = time.perf_counter()
                if now - last_report > progress_every:
                    log.info("scanned %d bp, %.2f Mbp/s", stats["bp"], stats["bp"] / (now - start) / 1e6)
                    last_report = now
            buf = "".join(pieces)
            if len(buf) >= window:
                _score_into(writer, scorer, buf, name, offset, fasta, stats)
            elif len(buf) >= model.motif_len:
                # A record shorter than one window is scored whole, as the model would score it.
                with torch.no_grad():
                    score = model(encode_chunk(buf, name, fasta)[None].to(scorer.device)).cpu().numpy()
                writer.windows(name, np.array([offset]), score, np.array([offset + len(buf)]))
                stats["windows"] += 1
            elif buf or offset == 0:
                stats["short_records"].append(name)
            writer.flush()
    seconds = time.perf_counter() - start
    stats.update({"peaks": writer.n_peaks, "seconds": seconds, "bp_per_s": stats["bp"] / max(seconds, 1e-9),
                  "window": window, "stride": stride, "threshold": threshold})
    if stats["short_records"]:
        log.warning("%s: %d records shorter than motif_len were not scored: %s", fasta,
                    len(stats["short_records"]), ", ".join(stats["short_records"][:5]))
    write_json(out_prefix + ".json", stats)
    return stats


def _score_into(writer: _Writer, scorer: WindowScorer, seq: str, name: str, offset: int, source, stats) -> None:
    if scorer.backend == "lookup":
        scores = scorer.score(chunk_codes(seq, name, source)).numpy()
    else:
        scores = scorer.score(encode_chunk(seq, name, source).to(scorer.device)).float().cpu().numpy()
    starts = offset + np.arange(len(scores)) * scorer.stride
    writer.windows(name, starts, scores)
    stats["windows"] += len(scores)


def run_scan(model_dir: str | Path, fasta: str | Path, out_prefix: str | Path, window: int = 101, stride: int = 50,
             threshold: float = 0.0, chunk: int = 1_000_000) -> dict:
    """The ``scan`` verb: load the model (on CUDA when available) and scan."""
    from biocnn.checkpoint import load_model
    from biocnn.device import select_device

    model, _ = load_model(model_dir, select_device("auto"))
    return scan_fasta(model, fasta, out_prefix, window, stride, threshold, chunk)
