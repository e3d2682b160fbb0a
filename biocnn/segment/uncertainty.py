"""Uncertainty from Monte Carlo samples: per-voxel maps and the per-image measures made from them.

For T softmax samples ``p_t`` of one voxel:

* predictive entropy ``H[mean_t p_t]`` (total uncertainty),
* expected entropy ``mean_t H[p_t]`` (aleatoric part),
* mutual information ``H[mean_t p_t] - mean_t H[p_t]`` (epistemic part, >= 0 by Jensen).

Both means are linear in the samples, so they are accumulated in a streaming way (a running
sum over sample chunks) and can be blended across overlapping sliding windows; entropy and
mutual information are formed only at the end. Entropies are in nats. How the per-image
measures become the review score is :mod:`biocnn.segment.review`'s job.
"""

from __future__ import annotations

import math

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


def max_entropy(num_classes: int) -> float:
    """The largest possible entropy for ``num_classes`` classes (nats)."""
    return math.log(num_classes)
