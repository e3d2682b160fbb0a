"""Metrics every task reports: ROC AUC and the expected calibration error (ECE)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def roc_auc(labels: Sequence[int] | np.ndarray, scores: Sequence[float] | np.ndarray) -> float:
    """Area under the ROC curve of ``scores`` for finding ``labels == 1`` (scikit-learn's
    ``roc_auc_score``); NaN when only one class is present, where it is undefined."""
    from sklearn.metrics import roc_auc_score

    labels = np.asarray(labels)
    if len(np.unique(labels)) < 2:
        return float("nan")
    return float(roc_auc_score(labels, np.asarray(scores)))


def calibration_bins(
    labels: Sequence[float] | np.ndarray, probs: Sequence[float] | np.ndarray, bins: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per equal-width probability bin: mean predicted probability, observed rate of
    ``labels == 1`` and count (empty bins: 0, 0, 0).

    For a multi-class model's top-class calibration, ``probs`` is the top-class probability
    and ``labels`` whether that class was right.
    """
    y = np.asarray(labels, dtype=np.float64)
    p = np.asarray(probs)
    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.digitize(p, edges[1:-1]), 0, bins - 1)
    conf, acc, count = np.zeros(bins), np.zeros(bins), np.zeros(bins)
    for b in range(bins):
        sel = which == b
        if sel.any():
            count[b], conf[b], acc[b] = sel.sum(), p[sel].mean(), y[sel].mean()
    return conf, acc, count


def expected_calibration_error(
    labels: Sequence[float] | np.ndarray, probs: Sequence[float] | np.ndarray, bins: int
) -> float:
    """ECE: the bin-size-weighted mean of |observed rate - mean probability| over ``bins``
    equal-width probability bins (:func:`calibration_bins`)."""
    conf, acc, count = calibration_bins(labels, probs, bins)
    total = 0.0
    for c, a, n in zip(conf, acc, count):
        total += n * abs(a - c)
    return float(total / max(len(np.asarray(probs)), 1))
