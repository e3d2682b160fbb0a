"""CPU kernels for genome scans that use the input being one-hot (numba).

A motif detector's output at position ``g`` is ``bias + sum_j W[:, base(g + j), j]``: with
one-hot input the convolution is ``motif_len`` table look-ups and vector additions, not
``4 * motif_len`` multiply-adds, so it does a quarter of the arithmetic of a dense
convolution. ``table[j, c]`` holds column ``j`` of every detector for base code ``c``
(0-3 = ACGT, 4 = ambiguous, whose one-hot column is 0.25 everywhere).

Pooling is per window; the ``motif_len - 1`` positions at each end of a window overlap
DeepBind's 0.25 padding, whose contribution is a precomputed constant per overlap width, so
every window's pooled features equal those of ``model(window)`` (up to float rounding).
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

_BLOCK = 2048
_WINDOW_BLOCK = 256
_Q = 3  # bases per look-up in the detector track (5**3 = 125 codes per table)


@njit(inline="always")
def _add_columns(acc, qcodes, qtable, codes, table, first, last, g):  # pragma: no cover - compiled
    """Add detector columns ``first .. last-1`` aligned so column ``first`` sits on base ``g``."""
    c = acc.shape[0]
    j = first
    while j + _Q <= last:
        row = qtable[j, qcodes[g + j - first]]
        for ch in range(c):
            acc[ch] += row[ch]
        j += _Q
    while j < last:
        row = table[j, codes[g + j - first]]
        for ch in range(c):
            acc[ch] += row[ch]
        j += 1


@njit(inline="always")
def _pool(acc, mx, sm):  # pragma: no cover - compiled
    """Rectify ``acc`` and fold it into the running max and sum."""
    for ch in range(acc.shape[0]):
        v = acc[ch] if acc[ch] > 0 else 0.0
        sm[ch] += v
        if v > mx[ch]:
            mx[ch] = v


@njit(parallel=True, cache=True, fastmath=False)
def detector_track(qcodes, qtable, codes, table, bias, n_pos, out):  # pragma: no cover - compiled
    """``out[g] = relu(bias + sum_j table[j, codes[g + j]])`` for ``g < n_pos``.

    Columns are summed ``q`` at a time: ``qcodes[g]`` is the code of the q-mer starting at
    ``g`` and ``qtable[j, qcode]`` the sum of columns ``j .. j+q-1`` for it, which cuts the
    look-ups by ``q``; the ``k mod q`` columns left over use ``table``.
    """
    k = table.shape[0]
    c = table.shape[2]
    n_blocks = (n_pos + _BLOCK - 1) // _BLOCK
    for b in prange(n_blocks):
        acc = np.empty(c, dtype=np.float32)
        for g in range(b * _BLOCK, min(n_pos, (b + 1) * _BLOCK)):
            acc[:] = bias
            _add_columns(acc, qcodes, qtable, codes, table, 0, k, g)
            for ch in range(c):
                out[g, ch] = acc[ch] if acc[ch] > 0 else 0.0


@njit(parallel=True, cache=True, fastmath=False)
def pool_windows(qcodes, qtable, codes, track, table, bias, pad_left, pad_right, window, stride, n_windows,
                 out_max, out_sum):  # pragma: no cover - compiled
    """Max and sum of the rectified detector outputs over every padded window.

    ``pad_left[o]``: contribution of ``o`` padding columns at a detector's start;
    ``pad_right[e]``: of ``e`` padding columns at its end.
    """
    k = table.shape[0]
    c = table.shape[2]
    inner = window - k + 1
    n_blocks = (n_windows + _WINDOW_BLOCK - 1) // _WINDOW_BLOCK
    # One scratch vector per block, and the outputs used as accumulators in place: no
    # allocation per window (millions of small allocations fragment the heap of a long scan).
    for b in prange(n_blocks):
        acc = np.empty(c, dtype=np.float32)
        for i in range(b * _WINDOW_BLOCK, min(n_windows, (b + 1) * _WINDOW_BLOCK)):
            s = i * stride
            mx = out_max[i]
            sm = out_sum[i]
            mx[:] = 0.0
            sm[:] = 0.0
            for g in range(s, s + inner):
                _pool(track[g], mx, sm)
            for o in range(1, k):  # detector starts o columns before the window
                for ch in range(c):  # element-wise: ``bias + pad_left[o]`` would allocate
                    acc[ch] = bias[ch] + pad_left[o, ch]
                _add_columns(acc, qcodes, qtable, codes, table, o, k, s)
                _pool(acc, mx, sm)
            for e in range(1, k):  # detector ends e columns after the window
                for ch in range(c):
                    acc[ch] = bias[ch] + pad_right[e, ch]
                _add_columns(acc, qcodes, qtable, codes, table, 0, k - e, s + window - k + e)
                _pool(acc, mx, sm)


def lookup_tables(weight: np.ndarray, pad_value: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(table, pad_left, pad_right) for conv weights (channels, 4, k)."""
    channels, _, k = weight.shape
    columns = np.vstack([np.eye(4), np.full((1, 4), pad_value)]).astype(np.float32)  # (5 codes, 4 bases)
    table = np.einsum("ca,mak->kcm", columns, weight).astype(np.float32)  # (k, 5, channels)
    pad_cols = table[:, 4, :]  # (k, channels): each column's contribution when it is padding
    pad_left = np.zeros((k, channels), np.float32)
    pad_right = np.zeros((k, channels), np.float32)
    for o in range(1, k):
        pad_left[o] = pad_cols[:o].sum(0)
        pad_right[o] = pad_cols[k - o:].sum(0)
    return np.ascontiguousarray(table), pad_left, pad_right


def qmer_tables(table: np.ndarray) -> np.ndarray:
    """(k - q + 1, 5**q, channels): sums of columns ``j .. j+q-1`` of ``table`` for every
    q-mer of codes 0-4 and every start column ``j``."""
    k, n_codes, channels = table.shape
    starts = max(k - _Q + 1, 1)
    out = np.zeros((starts, n_codes**_Q, channels), np.float32)
    digits = np.array(np.unravel_index(np.arange(n_codes**_Q), (n_codes,) * _Q))  # (q, 5**q)
    for j in range(k - _Q + 1):
        for i in range(_Q):
            out[j] += table[j + i, digits[i]]
    return out


def quad_tables(table: np.ndarray, channels: int | None = None) -> np.ndarray:
    """(5**4, k + 3, channels): ``out[q, j + 3]`` = sum of detector columns ``j .. j+3`` of
    ``table`` (k, 5, C) for the 4-mer of codes ``q`` (base 5, first base most significant), for
    every start column ``j`` in ``-3 .. k-1``; columns outside ``0 .. k-1`` count as zero, so a
    4-mer may hang over either end of the detector. Channels are zero-padded to ``channels``."""
    k, n_codes, c = table.shape
    channels = channels or c
    cols = np.zeros((k + 6, n_codes, channels), np.float32)  # zero columns -3..-1 and k..k+2
    cols[3:k + 3, :, :c] = table
    digits = np.array(np.unravel_index(np.arange(n_codes**4), (n_codes,) * 4))  # (4, 625)
    out = np.zeros((k + 3, n_codes**4, channels), np.float32)
    for j in range(k + 3):  # row j holds start column j - 3
        for i in range(4):
            out[j] += cols[j + i, digits[i]]
    return np.ascontiguousarray(out.transpose(1, 0, 2))  # code-major: a 4-mer's rows are adjacent


def qmer_codes(codes: np.ndarray) -> np.ndarray:
    """Code of the q-mer starting at every position (the last q - 1 positions get 0)."""
    out = np.zeros(len(codes), np.int32)
    n = len(codes) - _Q + 1
    if n > 0:
        for i in range(_Q):
            out[:n] = out[:n] * 5 + codes[i:i + n]
    return out
