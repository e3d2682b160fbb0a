"""Scores of every window of a chunk of sequence, with one pass of the motif detectors.

Scoring windows one by one would run the convolution ``window / stride`` times over every
base. Instead the detectors run once over the chunk, and each window's pooled features are
read off that one activation track:

* detector positions that lie fully inside a window are the chunk convolution's outputs at
  the window's positions (a strided max/avg pool of the track);
* the ``motif_len - 1`` positions at each end of a window overlap DeepBind's 0.25 padding;
  they are computed exactly from the window's first and last ``motif_len - 1`` bases padded
  with 0.25.

So a window's score equals ``model(window)`` (tested), at about the cost of one convolution
pass over the sequence. Both strands come from the same pass: the reverse strand's detectors
are stacked as extra output channels (:func:`biocnn.deepbind.scan_weights.strand_weights`).

Backends: ``native`` (CPU default): the C kernels of :mod:`biocnn.deepbind.native` (4-mer
table look-ups, pooling per stride-long segment, the dense head); ``torch`` (CUDA default, and
the CPU fallback, announced on stderr, when the kernels are not built or the model is larger
than they allow): dense convolutions.
"""

from __future__ import annotations

import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from biocnn.deepbind import native
from biocnn.deepbind.model import PAD_VALUE, DeepBind
from biocnn.deepbind.scan_batches import mask_uninformative
from biocnn.deepbind.scan_weights import (
    head_weights,
    in_huge_pages,
    lookup_tables,
    padded_channels,
    quad_tables,
    strand_weights,
)
from biocnn.errors import InputError
from biocnn.io.dna import ONE_HOT
from biocnn.io.fasta_stream import chunk_codes

ROW = 8192  # positions per row of the batched chunk convolution (rows parallelise over cores)
NATIVE_BLOCK = 128  # windows per block of the C kernel (its scratch memory is a few vectors per window)


class KernelFallbackWarning(RuntimeWarning):
    """The C kernels could not be used on CPU: the scan runs on torch, much slower."""


class WindowScorer:
    """Scores all windows of a chunk with one detector pass (see the module docstring).

    ``backend``: ``"auto"`` (C kernels on CPU, torch on CUDA), ``"native"`` or ``"torch"``.
    :attr:`backend` is the one used; :attr:`fallback_reason` says why the C kernels are not,
    where ``"auto"`` would have used them ('' otherwise).
    """

    def __init__(self, model: DeepBind, window: int, stride: int, backend: str = "auto"):
        k = model.motif_len
        if window < k:
            raise InputError("--window", f"window {window} bp is shorter than motif_len {k}")
        if stride < 1:
            raise InputError("--stride", "stride must be at least 1")
        if backend not in ("auto", "native", "torch"):
            raise ValueError(f"unknown scan backend {backend!r} (auto, native, torch)")
        self.model, self.window, self.stride, self.k = model.eval(), window, stride, k
        self.weight, self.bias = strand_weights(model)
        self.device = self.weight.device
        self.num_motifs = model.num_motifs
        self.avg = model.head.pool == "maxavg"
        self.strands = 2 if model.both_strands else 1
        # Also used by the torch backend, to encode bases and format bedGraph lines.
        self.kernels = native.load()
        self.fallback_reason = ""
        chosen = backend == "auto"
        if chosen:
            backend = "torch" if self.device.type == "cuda" else "native"
        reason = self._native_unusable() if backend == "native" else ""
        if reason and not chosen:
            raise RuntimeError(f"the native scan backend cannot run: {reason}")
        if reason:
            self.fallback_reason, backend = reason, "torch"
            warnings.warn(f"genome scan on torch, much slower: {reason}", KernelFallbackWarning, stacklevel=2)
        self.backend = backend
        self._one_hot = torch.from_numpy(ONE_HOT).to(self.device)  # (5 codes, 4 bases)
        self._local = threading.local()  # a code buffer per thread (batches are scored in parallel)
        self.threads = max(1, torch.get_num_threads())
        self.pool = None
        if backend == "native":
            self._pack()

    def _native_unusable(self) -> str:
        """Why the C kernels cannot score this model here ('' when they can)."""
        if self.kernels is None:
            return native.missing_reason()
        widths = [self.weight.shape[0]] + [
            layer.out_features for layer in self.model.head.mlp if isinstance(layer, torch.nn.Linear)
        ]
        if max(widths) > native.MAX_CHANNELS:
            return f"the model has {max(widths)} channels or hidden units, the C kernels at most {native.MAX_CHANNELS}"
        if self.k > native.MAX_MOTIF_LEN:
            return f"motif_len {self.k} is longer than the C kernels' {native.MAX_MOTIF_LEN}"
        return ""

    def _pack(self) -> None:
        """The model's weights as the C kernel reads them; channels padded to a multiple of 16 (one
        vector register), the padded channels staying 0."""
        table, pad_left, pad_right = lookup_tables(self.weight.cpu().numpy(), PAD_VALUE)
        self.padded_channels = cp = -(-self.weight.shape[0] // 16) * 16
        self.ztab = in_huge_pages(quad_tables(table, cp))
        self.pad_vectors = tuple(padded_channels(a, cp) for a in (self.bias.cpu().numpy(), pad_left, pad_right))
        self.head_weights = head_weights(self.model.head.mlp)
        self.pool = ThreadPoolExecutor(self.threads) if self.threads > 1 else None

    @property
    def parallel_batches(self) -> int:
        """How many batches may be scored at once: one per thread for the C kernels (each batch
        then runs on one thread), one otherwise."""
        return self.threads if self.backend == "native" else 1

    def one_hot(self, codes: np.ndarray) -> torch.Tensor:
        """One-hot ``(4, n)`` on the model's device from base codes: one byte per base crosses
        to the GPU, the expansion happens there."""
        return self._one_hot[torch.from_numpy(codes).to(self.device).long()].T.contiguous()

    def score_bases(
        self, raw: bytes, record: str, source: str | Path, offset: int = 0, split: bool = True
    ) -> np.ndarray:
        """Scores (float32) of the windows of a chunk of ASCII bases; an invalid character is an
        InputError naming ``record`` and its position (``offset``: the chunk's start in it).
        ``split``: spread the chunk's windows over the scorer's threads (C kernels only)."""
        if self.backend != "native":
            codes = chunk_codes(raw, record, source, offset, self.kernels)
            scores = self.score(self.one_hot(codes)).float().cpu().numpy()
            return mask_uninformative(scores, codes, self.window, self.stride)
        n = len(raw)
        n_windows = (n - self.window) // self.stride + 1
        if n_windows < 1:
            return np.zeros(0, np.float32)
        buf, lead = self._padded(n)  # the bases are encoded straight into the kernel's buffer
        chunk_codes(raw, record, source, offset, self.kernels, out=buf[lead : lead + n])
        scores = self.score_codes(buf, lead, n_windows, split)
        return mask_uninformative(scores, buf[lead : lead + n], self.window, self.stride)

    @torch.no_grad()
    def score_whole(self, raw: bytes, record: str, source: str | Path, offset: int = 0) -> np.ndarray:
        """The model's score (shape (1,)) of a piece of sequence shorter than a window, scored whole."""
        codes = chunk_codes(raw, record, source, offset, self.kernels)
        scores = self.model(self.one_hot(codes)[None]).float().cpu().numpy()
        return mask_uninformative(scores, codes, len(codes), 1)

    @torch.no_grad()
    def score(self, x: torch.Tensor | np.ndarray) -> torch.Tensor:
        """Scores of windows starting at 0, stride, ... that fit in ``x``: one-hot (4, n) for the
        torch backend, base codes (n,) uint8 for ``native``."""
        w, s, k = self.window, self.stride, self.k
        n_windows = (x.shape[-1] - w) // s + 1
        if n_windows < 1:
            return torch.zeros(0)
        if self.backend == "native":
            buf, lead = self._padded(x.shape[-1])
            buf[lead : lead + x.shape[-1]] = x
            return torch.from_numpy(self.score_codes(buf, lead, n_windows))
        pooled, total = self._pool_torch(x, n_windows)
        mean = total / (w + k - 1)
        m = self.num_motifs
        strands = [slice(0, m), slice(m, 2 * m)] if self.model.both_strands else [slice(0, m)]
        scores = []
        for ch in strands:
            feats = torch.cat([mean[:, ch], pooled[:, ch]], 1) if self.avg else pooled[:, ch]
            scores.append(self.model.head.mlp(feats).squeeze(-1))  # eval mode: dropout is the identity
        return torch.stack(scores).amax(0)

    # ------------------------------------------------------------------ C kernels
    @property
    def margins(self) -> tuple[int, int]:
        """Codes the C kernel reads before base 0 and after the last base of a chunk."""
        return 3, 4 * ((self.k + 3) // 4) + 8

    def _padded(self, n: int) -> tuple[np.ndarray, int]:
        """A code buffer for ``n`` bases with the margins the C kernel reads (valid codes, their
        values never matter), and the offset of base 0 in it. Reused from batch to batch: a
        fresh megabyte per batch costs page faults."""
        lead, tail = self.margins
        buf = getattr(self._local, "buffer", None)
        if buf is None or len(buf) < lead + n + tail:
            buf = self._local.buffer = np.zeros(lead + n + tail, np.uint8)
        return buf, lead

    def score_codes(self, buf: np.ndarray, lead: int, n_windows: int, split: bool = True) -> np.ndarray:
        """Window scores with the C kernels (pooling and the head in one call), windows split over
        threads when ``split``. ``buf``: base codes from ``lead`` on, with the margins of :meth:`_padded`."""
        scores = np.empty(n_windows, np.float32)
        w1t, b1, w2, b2 = self.head_weights

        def run(a: int, b: int) -> None:
            self.kernels.score(
                buf,
                lead,
                self.ztab,
                *self.pad_vectors,
                self.k,
                self.window,
                self.stride,
                a,
                b,
                NATIVE_BLOCK,
                self.num_motifs,
                self.strands,
                self.avg,
                w1t,
                b1,
                w2,
                b2,
                scores,
            )

        if self.pool is None or not split or n_windows < 2 * NATIVE_BLOCK:
            run(0, n_windows)
        else:  # the kernels run without the GIL: the threads score in parallel
            parts = np.linspace(0, n_windows, self.threads + 1).astype(int).tolist()
            list(self.pool.map(run, parts[:-1], parts[1:]))
        return scores

    # ------------------------------------------------------------------ torch
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
        right = x[:, w - k + 1 :].unfold(1, k - 1, s)[:, :n_windows].permute(1, 0, 2)
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
