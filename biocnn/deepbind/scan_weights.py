"""A DeepBind model's weights packed for the scan's C kernels (:mod:`biocnn.deepbind.native`).

With one-hot input a motif detector's output at position ``g`` is
``bias + sum_j W[:, base(g + j), j]``: table look-ups and additions instead of multiply-adds.
The kernels add 4-mer rows (sums of four columns) from :func:`quad_tables`, the constant
contribution of DeepBind's 0.25 padding from :func:`lookup_tables`, and run the head from
:func:`head_weights`. Every array starts on a cache line (:func:`aligned`); the 4-mer table, a
few MB read at random, lies in huge pages where the system grants them (:func:`in_huge_pages`).
"""

from __future__ import annotations

import mmap

import numpy as np
import torch

HUGE_PAGE = 2 << 20  # bytes in an x86-64 / arm64 huge page


def strand_weights(model) -> tuple[torch.Tensor, torch.Tensor]:
    """Conv weights ``(channels, 4, k)`` and biases of the detectors, the reverse strand's (the
    forward kernels reverse-complemented: flipped along bases and positions) stacked after the
    forward ones when the model reads both strands."""
    conv = model.motif_conv
    w, b = conv.weight.detach(), conv.bias.detach()
    if model.both_strands:
        w, b = torch.cat([w, w.flip(1).flip(2)]), torch.cat([b, b])
    return w.contiguous(), b.contiguous()


def lookup_tables(weight: np.ndarray, pad_value: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(table, pad_left, pad_right) for conv weights (channels, 4, k): ``table[j, c]`` (k, 5,
    channels) is column ``j`` of every detector for base code ``c`` (0-3 = ACGT, 4 = ambiguous,
    whose one-hot column is ``pad_value`` everywhere); ``pad_left[o]`` / ``pad_right[e]`` the
    contribution of ``o`` padding columns at a detector's start / ``e`` at its end."""
    channels, _, k = weight.shape
    columns = np.vstack([np.eye(4), np.full((1, 4), pad_value)]).astype(np.float32)  # (5 codes, 4 bases)
    table = np.einsum("ca,mak->kcm", columns, weight).astype(np.float32)  # (k, 5, channels)
    pad_cols = table[:, 4, :]  # (k, channels): each column's contribution when it is padding
    pad_left = np.zeros((k, channels), np.float32)
    pad_right = np.zeros((k, channels), np.float32)
    for o in range(1, k):
        pad_left[o] = pad_cols[:o].sum(0)
        pad_right[o] = pad_cols[k - o :].sum(0)
    return np.ascontiguousarray(table), pad_left, pad_right


def quad_tables(table: np.ndarray, channels: int | None = None) -> np.ndarray:
    """(5**4, k + 3, channels): ``out[q, j + 3]`` = sum of detector columns ``j .. j+3`` of
    ``table`` (k, 5, C) for the 4-mer of codes ``q`` (base 5, first base most significant), for
    every start column ``j`` in ``-3 .. k-1``; columns outside ``0 .. k-1`` count as zero, so a
    4-mer may hang over either end of the detector. Channels are zero-padded to ``channels``."""
    k, n_codes, c = table.shape
    channels = channels or c
    cols = np.zeros((k + 6, n_codes, channels), np.float32)  # zero columns -3..-1 and k..k+2
    cols[3 : k + 3, :, :c] = table
    digits = np.array(np.unravel_index(np.arange(n_codes**4), (n_codes,) * 4))  # (4, 625)
    out = np.zeros((k + 3, n_codes**4, channels), np.float32)
    for j in range(k + 3):  # row j holds start column j - 3
        for i in range(4):
            out[j] += cols[j + i, digits[i]]
    return np.ascontiguousarray(out.transpose(1, 0, 2))  # code-major: a 4-mer's rows are adjacent


def head_weights(mlp: torch.nn.Sequential) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """(w1t (features, hidden), b1, w2, b2) of a binding head ``[Dropout, Linear, ReLU,] Dropout,
    Linear(-> 1)`` for the C kernel; hidden units are padded with zero units to a multiple of 16
    (their ReLU output is 0 and their output weight 0). Without a hidden layer w1t is empty."""
    linear = [layer for layer in mlp if isinstance(layer, torch.nn.Linear)]
    others = [layer for layer in mlp if not isinstance(layer, (torch.nn.Linear, torch.nn.ReLU, torch.nn.Dropout))]
    if others or len(linear) not in (1, 2) or linear[-1].out_features != 1:
        raise TypeError(f"the native scan supports DeepBind's head (optional hidden layer, one output), not {mlp}")

    def numpy(t: torch.Tensor) -> np.ndarray:
        return t.detach().cpu().numpy().astype(np.float32)

    out = linear[-1]
    if len(linear) == 1:
        return (
            np.zeros((out.in_features, 0), np.float32),
            np.zeros(0, np.float32),
            aligned(numpy(out.weight)[0]),
            float(out.bias.detach()),
        )
    hidden = linear[0]
    pad = -(-hidden.out_features // 16) * 16 - hidden.out_features
    w1t = np.pad(numpy(hidden.weight).T, [(0, 0), (0, pad)])
    b1, w2 = np.pad(numpy(hidden.bias), (0, pad)), np.pad(numpy(out.weight)[0], (0, pad))
    return aligned(w1t), aligned(b1), aligned(w2), float(out.bias.detach())


def padded_channels(a: np.ndarray, channels: int) -> np.ndarray:
    """``a`` with its last axis zero-padded to ``channels``, aligned."""
    return aligned(np.pad(a, [(0, 0)] * (a.ndim - 1) + [(0, channels - a.shape[-1])]))


def aligned(a: np.ndarray, align: int = 64) -> np.ndarray:
    """A C-contiguous float32 copy of ``a`` whose data starts on a cache-line boundary (a table row
    of 32 channels then spans 2 cache lines, not 3)."""
    a = np.ascontiguousarray(a, np.float32)
    raw = np.empty(a.nbytes + align, np.uint8)
    start = -raw.ctypes.data % align
    out = raw[start : start + a.nbytes].view(np.float32).reshape(a.shape)
    out[...] = a
    return out


def in_huge_pages(a: np.ndarray) -> np.ndarray:
    """A float32 copy of ``a`` in memory that the kernel is asked to back with huge pages (Linux
    transparent huge pages, granted where enabled for ``madvise``): look-ups spread over a few MB
    would otherwise miss the TLB most of the time. Elsewhere: :func:`aligned`."""
    advice = getattr(mmap, "MADV_HUGEPAGE", None)
    if advice is None:
        return aligned(a)
    a = np.ascontiguousarray(a, np.float32)
    span = -(-max(a.nbytes, 1) // HUGE_PAGE) * HUGE_PAGE
    # private: shared anonymous memory would be shmem, whose huge pages are a separate setting
    memory = mmap.mmap(-1, span + HUGE_PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)  # + room to align
    raw = np.frombuffer(memory, np.uint8)  # keeps ``memory`` alive as long as the array
    start = -raw.ctypes.data % HUGE_PAGE
    try:
        memory.madvise(advice, start, span)
    except OSError:
        pass  # not granted: ordinary pages, the same results
    out = raw[start : start + a.nbytes].view(np.float32).reshape(a.shape)
    out[...] = a
    return out
