"""Out-of-distribution signal: encoder feature statistics and their density.

As in Lee et al. 2018 and Gonzalez et al. 2021 ("distance-based detection of out-of-distribution
silent failures"): a U-Net that is confidently wrong on an unfamiliar input still shows it in
its encoder features. Each training image (and its flips) is described by
:func:`encoder_features` (per encoder convolution and channel: the log of the spatial standard
deviation of its response *before* the norm layer, averaged over the sliding windows); a
Gaussian with a Ledoit-Wolf shrinkage covariance is fitted to them (:class:`FeatureDensity`),
and an input's Mahalanobis distance to it says how unlike the training images it looks.

To say what distance is large, the training images' own distances are kept as a reference, each
computed *cross-fitted* (with a density fitted without that image, K folds), since an image's
distance to a fit that includes it is optimistically small: with fewer training images than
feature dimensions every new image lies beyond all of them (on 24 generated malaria fields the
in-sample reference flagged every test image). :meth:`FeatureDensity.zscore` places a distance
on a log-normal fitted robustly to them, its spread widened until at most one training image
lies beyond the cut.

How the distance enters the review score, and how it is stored, is
:mod:`biocnn.segment.review`'s job.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn


@torch.no_grad()
def encoder_features(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``(B, D)``: per encoder convolution and output channel, ``log`` of the spatial standard
    deviation of the convolution's response before its norm layer (``D`` = the summed output
    channels of every convolution in the backbone's stages).

    Why before the norm: instance norm (the 3D configs) divides each window's channels by
    their own spread, so what comes out of it barely changes when an image gets noisier,
    blurrier or differently contrasted; the response's scale, which the norm removes, is what
    moves. The log makes a scale change a shift, which suits a Gaussian.
    The stages run without their dropout (as in eval mode), so the features are deterministic
    even while Monte Carlo dropout is switched on.
    """
    out = []
    h = x.float()
    for stage in model.backbone.stages:
        for block in stage.convs:  # MONAI Convolution: .conv, then .adn (norm, activation)
            response = block.conv(h)
            dims = tuple(range(2, response.dim()))
            out.append(torch.log(response.std(dims, correction=0) + 1e-6))
            h = block.adn(response) if hasattr(block, "adn") else response
    return torch.cat(out, 1)


@contextlib.contextmanager
def recording_encoder_features(model: nn.Module) -> Iterator[list[torch.Tensor]]:
    """Within the block, every backbone pass of ``model`` appends its :func:`encoder_features`
    ``(B, D)`` to the yielded list (forward hooks on the encoder convolutions): the passes that
    sample the segmentation give the features too, without passes of their own.

    Exact where no dropout in the encoder is active (its convolutions then see what
    :func:`encoder_features` feeds them); the caller checks that.
    """
    convs = [block.conv for stage in model.backbone.stages for block in stage.convs]
    pending: list[torch.Tensor] = []
    passes: list[torch.Tensor] = []

    def hook(_module, _args, response):
        dims = tuple(range(2, response.dim()))
        pending.append(torch.log(response.float().std(dims, correction=0) + 1e-6))
        if len(pending) == len(convs):
            passes.append(torch.cat(pending, 1))
            pending.clear()

    handles = [conv.register_forward_hook(hook) for conv in convs]
    try:
        yield passes
    finally:
        for handle in handles:
            handle.remove()


@dataclass
class FeatureDensity:
    """Gaussian density of (standardised) training-image features and reference distances.

    Attributes:
        mean, scale: per-feature mean and standard deviation of the training features (the
            features are standardised first, so the shrinkage target suits every stage).
        precision: inverse Ledoit-Wolf covariance of the standardised features.
        reference: cross-fitted distances of the training images (their unflipped view).
    """

    mean: np.ndarray
    scale: np.ndarray
    precision: np.ndarray
    reference: np.ndarray

    @staticmethod
    def _fit(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        from sklearn.covariance import LedoitWolf

        mean = x.mean(0)
        scale = x.std(0)
        scale = np.where(scale > 1e-8 * max(float(scale.max()), 1e-12), scale, 1.0)  # constant features
        z = (x - mean) / scale
        return mean, scale, LedoitWolf().fit(z).precision_

    @classmethod
    def fit(cls, features: np.ndarray, folds: int = 10) -> FeatureDensity:
        """Fit on ``(N images, V views, D)`` features; reference distances by K-fold cross-fitting.

        All views of one image stay in the same fold, so an image never informs its own
        reference distance.
        """
        features = np.asarray(features, dtype=np.float64)
        if features.ndim != 3 or features.shape[0] < 3:
            raise ValueError(f"need features of shape (images >= 3, views, dims), got {features.shape}")
        n, v, d = features.shape
        mean, scale, precision = cls._fit(features.reshape(n * v, d))
        reference = np.empty(n)
        order = np.arange(n)
        for held in np.array_split(order, min(folds, n)):
            rest = np.setdiff1d(order, held)
            m, s, p = cls._fit(features[rest].reshape(len(rest) * v, d))
            reference[held] = _mahalanobis(features[held, 0], m, s, p)
        return cls(mean, scale, precision, np.sort(reference))

    def distance(self, features: np.ndarray) -> np.ndarray:
        """Mahalanobis distance of ``(..., D)`` features to the training density."""
        return _mahalanobis(np.asarray(features, dtype=np.float64), self.mean, self.scale, self.precision)

    def log_scale(self, quantile: float = 0.99) -> tuple[float, float]:
        """Median and robust spread (1.4826 x MAD) of the log reference distances, the spread
        widened where needed so that at most one training image lies beyond the ``quantile``
        cut.

        The robust fit keeps one odd training image from setting the bar, but where a whole
        group of training images lies far out (a heavy tail) it would put them beyond the
        cut. Those are training images: the cut must not call them unfamiliar. With one
        outlier, or none beyond the cut, the widening changes nothing.
        """
        from scipy.stats import norm

        logs = np.sort(np.log(np.maximum(self.reference, 1e-12)))
        median = float(np.median(logs))
        spread = 1.4826 * float(np.median(np.abs(logs - median)))
        if spread <= 1e-9:  # degenerate references: fall back to the plain spread
            spread = max(float(logs.std()), 1e-6)
        if len(logs) >= 2:
            spread = max(spread, (float(logs[-2]) - median) / float(norm.ppf(quantile)))
        return median, spread

    def zscore(self, distance: float, quantile: float = 0.99) -> float:
        """How many (robust, see :meth:`log_scale`) standard deviations ``ln(distance)`` lies
        above the training median; ``quantile`` is the cut the caller will apply."""
        median, spread = self.log_scale(quantile)
        return (float(np.log(max(distance, 1e-12))) - median) / spread

    def percentile(self, distance: float, quantile: float = 0.99) -> float:
        """Estimated share of training-like images nearer than ``distance``.

        A log-normal fitted robustly (median, MAD; see :meth:`log_scale`) to the cross-fitted
        training distances, so that one odd training image does not set the bar and the
        estimate can resolve the 99th percentile from a few dozen images.
        """
        from scipy.stats import norm

        return float(norm.cdf(self.zscore(distance, quantile)))

    def arrays(self) -> dict[str, np.ndarray]:
        """The arrays that define the density (for storing it)."""
        return {k: np.asarray(getattr(self, k), dtype=np.float64) for k in ("mean", "scale", "precision", "reference")}


def _mahalanobis(x: np.ndarray, mean: np.ndarray, scale: np.ndarray, precision: np.ndarray) -> np.ndarray:
    z = (x - mean) / scale
    return np.sqrt(np.maximum(np.einsum("...i,ij,...j->...", z, precision, z), 0.0))
