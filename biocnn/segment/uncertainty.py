"""Uncertainty from Monte Carlo samples: predictive entropy, mutual information, image scores.

For T softmax samples ``p_t`` of one voxel:

* predictive entropy ``H[mean_t p_t]`` (total uncertainty),
* expected entropy ``mean_t H[p_t]`` (aleatoric part),
* mutual information ``H[mean_t p_t] - mean_t H[p_t]`` (epistemic part, >= 0 by Jensen).

Both means are linear in the samples, so they are accumulated in a streaming way (a running
sum over sample chunks) and can be blended across overlapping sliding windows; entropy and
mutual information are formed only at the end. Entropies are in nats.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

EPS = 1e-8


def entropy(p: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """Shannon entropy (nats) of probabilities ``p`` along ``dim``."""
    return -(p * torch.log(p.clamp_min(EPS))).sum(dim)


class SampleAccumulator:
    """Running sums of softmax probabilities and their entropies over Monte Carlo samples."""

    def __init__(self) -> None:
        self.sum_p: torch.Tensor | None = None
        self.sum_h: torch.Tensor | None = None
        self.count = 0

    def add(self, logits: torch.Tensor) -> None:
        """Add samples given as logits ``(n, B, C, *spatial)``."""
        p = torch.softmax(logits.float(), dim=2)
        h = entropy(p, dim=2)
        sp, sh = p.sum(0), h.sum(0)
        self.sum_p = sp if self.sum_p is None else self.sum_p + sp
        self.sum_h = sh if self.sum_h is None else self.sum_h + sh
        self.count += logits.shape[0]

    def add_probs(self, p: torch.Tensor) -> None:
        """Add samples given as probabilities ``(n, B, C, *spatial)``."""
        self.add(torch.log(p.clamp_min(EPS)))

    def stats(self) -> torch.Tensor:
        """``(B, C + 1, *spatial)``: mean probabilities and, last, the mean entropy."""
        if self.count == 0:
            raise ValueError("no samples were added")
        return torch.cat([self.sum_p / self.count, (self.sum_h / self.count).unsqueeze(1)], dim=1)


def maps_from_stats(stats: torch.Tensor) -> dict[str, torch.Tensor]:
    """From ``(B, C + 1, ...)`` stats: ``prob``, ``label``, ``entropy``, ``mutual_info``."""
    mean_p = stats[:, :-1]
    mean_p = mean_p / mean_p.sum(1, keepdim=True).clamp_min(EPS)  # blending may drift from 1
    expected_h = stats[:, -1]
    pred_h = entropy(mean_p, dim=1)
    return {
        "prob": mean_p,
        "label": mean_p.argmax(1),
        "entropy": pred_h,
        "mutual_info": (pred_h - expected_h).clamp_min(0),
    }


def structure_uncertainty(prob: np.ndarray, label: np.ndarray, margin: int = 2) -> float:
    """Doubt about each predicted structure's outline, per structure voxel, averaged over classes.

    For each foreground class ``c`` (``prob`` is ``(C, *spatial)``, ``label`` the class indices,
    0 = background): the binary entropy of ``p_c`` ("class ``c`` or not") summed over the
    voxels predicted ``c`` dilated by ``margin`` voxels, divided by their count + 1; then the
    mean over the foreground classes. This mirrors the error it is meant to rank, 1 - the mean
    of the per-class Dice: each class's Dice error is its misplaced outline over its size, so a
    small class (a necrotic core) weighs as much as a large one (the edema around it), and
    doubt between two *other* classes does not count against class ``c``. The dilation lets the
    uncertain rim count but not the background far from any object (mean entropy over the image
    measures how much background there is). A class not predicted anywhere scores 0 (a
    confident "not here"; the feature distance covers confident failures). Scoring each class
    on its own keeps a large class's doubt from drowning a small one's. With one foreground
    class this is the predictive entropy over the dilated structure per structure voxel.
    """
    from scipy import ndimage

    prob = np.asarray(prob)
    label = np.asarray(label)
    per_class = []
    for c in range(1, prob.shape[0]):
        hit = label == c
        if not hit.any():
            per_class.append(0.0)
            continue
        region = ndimage.binary_dilation(hit, iterations=margin) if margin > 0 else hit
        p = np.clip(prob[c][region].astype(np.float64), EPS, 1 - EPS)
        doubt = -(p * np.log(p) + (1 - p) * np.log1p(-p))
        per_class.append(float(doubt.sum() / (hit.sum() + 1.0)))
    return float(np.mean(per_class)) if per_class else 0.0


def expected_dice_error(prob: np.ndarray, label: np.ndarray) -> float:
    """1 - the Dice a *calibrated* model expects: mean over foreground classes of the soft Dice
    between the hard label map and the mean class probabilities ``prob`` ``(C, *spatial)``.

    If the truth were drawn voxel by voxel from ``prob``, ``2 sum_{label=c} p_c / (sum p_c +
    |label=c|)`` approximates the expected Dice of class ``c``. A perfect confident
    prediction gives 0; a class that is neither predicted nor probable counts as Dice 1 (the
    +1 smoothing voxel). It is only as good as the calibration: a confidently wrong model
    under a shift estimates a small error.
    """
    prob = np.asarray(prob, dtype=np.float64)
    label = np.asarray(label)
    dice = []
    for c in range(1, prob.shape[0]):
        hit = label == c
        dice.append((2.0 * prob[c][hit].sum() + 1.0) / (prob[c].sum() + hit.sum() + 1.0))
    return float(1.0 - np.mean(dice)) if dice else 0.0


# Weight of the structure uncertainty in the score floor of unfamiliar inputs (see image_score).
FLOOR_TIE_BREAK = 0.01


def image_score(structure_unc: float, ood: bool = False, review_threshold: float | None = None) -> float:
    """The review score in ``uncertainty.csv`` (sort by it, largest first).

    ``structure_unc`` (:func:`structure_uncertainty`) ranks inputs by how much of their
    segmentation the samples doubt; it tracks 1 - Dice. An input whose encoder features lie
    outside the training images' range (``ood``, see :mod:`biocnn.segment.ood`) scores at
    least ``review_threshold`` (by default a 0.9 quantile of the training images' structure
    uncertainty, see :func:`threshold_from_training`): it rises above most ordinary inputs even when
    the model is confidently wrong about it, yet inputs with still more doubt about their
    outlines stay ahead of it, because being unfamiliar does not mean being wrong. So
    ``score >= review_threshold`` exactly for the inputs flagged for review.

    The floor is ``review_threshold + FLOOR_TIE_BREAK * structure_unc``, not the threshold
    itself: the unfamiliar inputs lifted to it keep their structure-uncertainty order among
    themselves instead of tying (a hundredth of it barely moves them against other inputs);
    a tie would throw away the order within the group of flagged inputs, which spans the widest
    range of errors.

    Without feature statistics or without a threshold, the score is the structure uncertainty.
    """
    if ood and review_threshold is not None:
        floor = float(review_threshold) + FLOOR_TIE_BREAK * float(structure_unc)
        return max(float(structure_unc), floor)
    return float(structure_unc)


def threshold_from_training(inference, info: dict[str, Any], tta: bool = False) -> float | None:
    """The review threshold for one model: ``inference.review_threshold`` if set, else the
    ``inference.review_quantile`` of the training images' structure uncertainty stored with the
    feature statistics ``info`` (or ``None``): the values measured with flip TTA when ``tta``
    (where stored), else those measured with Monte Carlo dropout (see
    :func:`conformal_quantile`; :func:`stored_sampling_matches` says when they apply).

    ``inference`` is the model's :class:`~biocnn.segment.config.InferenceConfig`.
    """
    if inference.review_threshold is not None:
        return float(inference.review_threshold)
    values = (tta and info.get("training_structure_uncertainty_tta")) or info.get("training_structure_uncertainty")
    if not values:
        return None
    return conformal_quantile(values, inference.review_quantile)


def conformal_quantile(values: Sequence[float], q: float) -> float:
    """The finite-sample (split-conformal) ``q`` quantile: the ``ceil((n + 1) q)``-th smallest
    of the ``n`` values (the largest when that exceeds ``n``).

    For a new input exchangeable with them, that bounds the chance of exceeding it by
    ``1 - q``; the interpolated sample quantile does not, which matters for the dozen cases a
    3D training set may have.
    """
    values = np.sort(np.asarray(values, dtype=np.float64))
    rank = min(len(values), math.ceil((len(values) + 1) * q))
    return float(values[rank - 1])


def stored_sampling_matches(info: dict[str, Any], models: int, mc_samples: int, tta: bool) -> bool:
    """Whether the training values a model stores were sampled the way ``predict`` samples.

    The structure uncertainty's scale depends on the sampling: a model stores its training
    images' values under Monte Carlo dropout with ``info["mc_samples"]`` samples and under flip
    TTA with dropout off (one sample). An ensemble's averaged members, or another number of
    samples, give values on another scale.
    """
    if models != 1:
        return False
    if tta:
        return mc_samples == 1 and bool(info.get("training_structure_uncertainty_tta"))
    return mc_samples == info.get("mc_samples")


def max_entropy(num_classes: int) -> float:
    """The largest possible entropy for ``num_classes`` classes (nats)."""
    return math.log(num_classes)
