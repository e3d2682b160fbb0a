"""Screening metrics: ROC AUC with a bootstrap interval, sensitivity/specificity at 90%,
the operating threshold, calibration (ECE), breast/exam aggregation, and their figures.

ROC AUC and ECE themselves come from :mod:`biocnn.metrics`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_curve

from biocnn.io.atomic import atomic_path
from biocnn.metrics import calibration_bins, expected_calibration_error, roc_auc

# Equal-width probability bins of the ECE and the reliability diagram.
ECE_BINS = 10


def _rank_auc(y: np.ndarray, p: np.ndarray) -> float:
    """The ROC AUC as the Mann-Whitney U statistic (ties count half), for the bootstrap only:
    the same area as :func:`biocnn.metrics.roc_auc` up to rounding, and fast enough to repeat
    a thousand times."""
    from scipy.stats import rankdata

    ranks = rankdata(p)
    pos = y.astype(bool)
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def bootstrap_auc(
    labels: Sequence[int],
    probs: Sequence[float],
    groups: Sequence[str] | None = None,
    n: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> tuple[float, float]:
    """Percentile bootstrap interval of the AUC.

    With ``groups`` (patient IDs) whole patients are resampled, since a patient's images are
    not independent of each other.
    """
    y, p = np.asarray(labels), np.asarray(probs, dtype=float)
    rng = np.random.default_rng(seed)
    if groups is None:
        members = [np.array([i]) for i in range(len(y))]
    else:
        index: dict[str, list[int]] = {}
        for i, g in enumerate(groups):
            index.setdefault(str(g), []).append(i)
        members = [np.array(v) for v in index.values()]
    values = []
    for _ in range(n):
        pick = np.concatenate([members[i] for i in rng.integers(0, len(members), len(members))])
        if y[pick].min() != y[pick].max():
            values.append(_rank_auc(y[pick], p[pick]))
    if not values:
        return float("nan"), float("nan")
    alpha = (1 - level) / 2
    return float(np.quantile(values, alpha)), float(np.quantile(values, 1 - alpha))


def sensitivity_at_specificity(labels, probs, specificity: float = 0.9) -> float:
    """Best sensitivity among thresholds whose specificity is at least ``specificity``."""
    fpr, tpr, _ = roc_curve(np.asarray(labels), np.asarray(probs))
    ok = fpr <= 1 - specificity + 1e-12
    return float(tpr[ok].max()) if ok.any() else 0.0


def specificity_at_sensitivity(labels, probs, sensitivity: float = 0.9) -> float:
    """Best specificity among thresholds whose sensitivity is at least ``sensitivity``."""
    fpr, tpr, _ = roc_curve(np.asarray(labels), np.asarray(probs))
    ok = tpr >= sensitivity - 1e-12
    return float((1 - fpr[ok]).max()) if ok.any() else 0.0


def threshold_for_sensitivity(labels, probs, sensitivity: float = 0.9) -> float:
    """The highest threshold (``prob >= t`` flags) that reaches ``sensitivity`` on this data."""
    fpr, tpr, thresholds = roc_curve(np.asarray(labels), np.asarray(probs), drop_intermediate=False)
    ok = np.nonzero(tpr >= sensitivity - 1e-12)[0]
    t = float(thresholds[ok[0]])
    return min(t, 1.0)  # roc_curve's first threshold is +inf


def rates_at(labels, probs, threshold: float) -> dict[str, float]:
    """Sensitivity and specificity of flagging ``prob >= threshold``."""
    y, flag = np.asarray(labels).astype(bool), np.asarray(probs) >= threshold
    sens = float((flag & y).sum() / max(y.sum(), 1))
    spec = float((~flag & ~y).sum() / max((~y).sum(), 1))
    return {"sensitivity": sens, "specificity": spec}


def aggregate(rows: list[dict], how: str = "mean") -> tuple[list[dict], list[dict]]:
    """Per-breast and per-exam scores from per-image rows ``{study, laterality, probability, ...}``.

    A breast's score is the mean (or max) over its views; an exam's is the max over breasts
    (one suspicious breast makes a suspicious exam). ``label`` is carried when present.
    """
    if how not in ("mean", "max"):
        raise ValueError(f"aggregate must be 'mean' or 'max', got {how!r}")
    reduce = np.mean if how == "mean" else np.max
    breasts: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        breasts.setdefault((r["study"], r["laterality"]), []).append(r)
    breast_rows = []
    for (study, lat), members in sorted(breasts.items()):
        row = {
            "study": study,
            "patient": members[0].get("patient", ""),
            "laterality": lat,
            "views": ",".join(sorted(m.get("view", "") for m in members)),
            "probability": float(reduce([m["probability"] for m in members])),
        }
        if all("label" in m for m in members):
            row["label"] = int(max(m["label"] for m in members))
        breast_rows.append(row)
    exams: dict[str, list[dict]] = {}
    for b in breast_rows:
        exams.setdefault(b["study"], []).append(b)
    exam_rows = []
    for study, members in sorted(exams.items()):
        row = {
            "study": study,
            "patient": members[0]["patient"],
            "probability": float(max(m["probability"] for m in members)),
        }
        if all("label" in m for m in members):
            row["label"] = int(max(m["label"] for m in members))
        exam_rows.append(row)
    return breast_rows, exam_rows


def summary(labels, probs, threshold: float, groups=None, n_boot: int = 1000, seed: int = 0) -> dict[str, float]:
    """Every headline number for one level (image, breast or exam)."""
    low, high = bootstrap_auc(labels, probs, groups, n_boot, seed)
    at = rates_at(labels, probs, threshold)
    return {
        "n": int(len(labels)),
        "positives": int(np.sum(labels)),
        "auc": roc_auc(labels, probs),
        "auc_ci_low": low,
        "auc_ci_high": high,
        "sens_at_spec90": sensitivity_at_specificity(labels, probs, 0.9),
        "spec_at_sens90": specificity_at_sensitivity(labels, probs, 0.9),
        "threshold": threshold,
        "sensitivity": at["sensitivity"],
        "specificity": at["specificity"],
        "ece": expected_calibration_error(labels, probs, ECE_BINS),
    }


def plot_roc(
    curves: dict[str, tuple[Sequence[int], Sequence[float]]],
    path: str | Path,
    operating_point: tuple[float, float] | None = None,
) -> None:
    """ROC curves (one per level) with the operating point, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    for name, (y, p) in curves.items():
        fpr, tpr, _ = roc_curve(np.asarray(y), np.asarray(p))
        ax.plot(fpr, tpr, label=f"{name} (AUC {roc_auc(y, p):.3f})")
    if operating_point is not None:
        ax.plot([1 - operating_point[1]], [operating_point[0]], "ko", label="operating point")
    ax.plot([0, 1], [0, 1], ":", color="grey")
    ax.set(xlabel="1 - specificity", ylabel="sensitivity", title="ROC", xlim=(0, 1), ylim=(0, 1.01))
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)


def plot_reliability(labels, probs, path: str | Path, bins: int = ECE_BINS) -> None:
    """Reliability diagram (observed malignancy rate against predicted probability) as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    conf, acc, count = calibration_bins(labels, probs, bins)
    centres = (np.arange(bins) + 0.5) / bins
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    used = count > 0
    ax.bar(centres[used], acc[used], width=1 / bins, edgecolor="k", alpha=0.7, label="observed")
    ax.plot(conf[used], acc[used], "o", color="C1", label="mean predicted")
    ax.plot([0, 1], [0, 1], ":", color="grey")
    ax.set(
        xlabel="predicted probability",
        ylabel="observed malignant fraction",
        title=f"Reliability (ECE {expected_calibration_error(labels, probs, bins):.3f})",
        xlim=(0, 1),
        ylim=(0, 1),
    )
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)
