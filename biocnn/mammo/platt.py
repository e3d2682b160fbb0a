"""Probability calibration of the view classifier (Platt scaling on validation logits).

Training balances the classes (``pos_weight`` or a balanced sampler), which shifts the logits:
the ranking (AUC) is fine but the probabilities over-state malignancy. A clinician reads the
probability, so ``train`` fits ``p = sigmoid(slope * logit + intercept)`` on the validation
images (never the test images) and stores it in ``operating_point.json``; ``evaluate`` and
``score`` apply it. The map is monotone, so AUC and the flagged set at the stored threshold
(chosen on calibrated validation probabilities) are unchanged by it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch


def fit_platt(logits: Sequence[float], labels: Sequence[int]) -> dict[str, Any]:
    """Slope and intercept of a logistic regression of ``labels`` on ``logits``.

    scikit-learn's L2 penalty (C = 1) keeps the slope finite when the validation set is
    perfectly separated, where an unpenalised fit would send the probabilities to 0 and 1.
    """
    from sklearn.linear_model import LogisticRegression

    z = np.asarray(logits, np.float64).reshape(-1, 1)
    y = np.asarray(labels, np.int64)
    if len(set(y.tolist())) < 2:
        raise ValueError("calibration needs both classes among the validation images")
    lr = LogisticRegression(C=1.0).fit(z, y)
    return {
        "method": "platt",
        "slope": float(lr.coef_[0, 0]),
        "intercept": float(lr.intercept_[0]),
        "fitted_on": "validation",
        "images": int(len(y)),
    }


def calibrated_probs(logits: torch.Tensor | np.ndarray, calibration: dict[str, Any] | None) -> np.ndarray:
    """Probabilities from raw logits; ``calibration=None`` (no stored Platt scaling) is the plain
    sigmoid."""
    z = torch.as_tensor(logits).detach().double().cpu().reshape(-1)  # float64: a small slope keeps the ranking
    if calibration:
        z = calibration["slope"] * z + calibration["intercept"]
    return torch.sigmoid(z).numpy()
