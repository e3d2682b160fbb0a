"""Out-of-distribution detection from encoder feature statistics (a feature-density distance).

As in Lee et al. 2018 and Gonzalez et al. 2021 ("distance-based detection of out-of-distribution
silent failures"): a U-Net that is confidently wrong on an unfamiliar input still shows it in
its encoder features. At the end of training each training image (and its flips) is described
by :func:`encoder_features` (per encoder convolution and channel: the log of the spatial
standard deviation of its response *before* the norm layer, averaged over the sliding windows);
a Gaussian with a Ledoit-Wolf shrinkage covariance is fitted to them (:class:`FeatureDensity`),
and an input's Mahalanobis distance to it says how unlike the training images it looks.

To say what distance is large, the training images' own distances are kept as a reference, each
computed *cross-fitted* (with a density fitted without that image, K folds), since an image's
distance to a fit that includes it is optimistically small. ``percentile(d)`` estimates the
share of training-like images nearer than ``d`` from a log-normal fitted robustly to those
reference distances.

A second, separate check looks at the input itself: :func:`noise_levels` (the noise each channel
carries, estimated from its finest wavelet details), with its own density and reference fitted
on the same training images (``FeatureDensity.noise``). The encoder's window-averaged features
barely move when a 3D volume gets noisier, while the noise estimate separates such inputs at
once. :func:`combined_zscore` joins the two checks into one out-of-distribution z-score.

Everything lives in ``feature_stats.safetensors`` in the model directory (no pickle). A model
directory without the file gets no out-of-distribution columns; files of a format listed in
:data:`OLD_FORMATS` are ignored with a warning (retrain to get them back), and files without a
noise density run the encoder check only.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from biocnn.predict import eval_mode

log = logging.getLogger(__name__)

FEATURE_STATS = "feature_stats.safetensors"
FORMAT = "biocnn-segment-feature-density/3"
# Formats still recognised, and why their contents cannot be used with this code.
OLD_FORMATS = {
    "biocnn-segment-feature-density/1": "features taken after the norm layers",
    "biocnn-segment-feature-density/2": "training structure uncertainty pooled over the classes",
}


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


def image_features(
    models: Sequence[nn.Module],
    image: torch.Tensor,
    views: Sequence[Sequence[int]],
    roi_size: Sequence[int],
    sw_batch_size: int = 4,
    overlap: float = 0.5,
    device: torch.device | None = None,
) -> np.ndarray:
    """Features of one image ``(C_in, *spatial)`` per model and flipped view: ``(M, V, D)``.

    The image is cut into the same sliding windows as at prediction (MONAI pads images smaller
    than a window the same way) and the window features are averaged. Encoder-only passes need
    far less memory than sampling, so at least 4 windows go through at a time.
    """
    from monai.inferers import sliding_window_inference

    device = device or image.device
    result = []
    for model in models:
        per_view = []
        # Norm layers must use their running statistics (a model fresh from training is in
        # train mode); the caller's modes are put back after.
        with eval_mode(model), torch.no_grad():
            for axes in views:
                x = image.flip([a + 1 for a in axes]) if axes else image
                windows: list[torch.Tensor] = []

                def record(w: torch.Tensor, _model=model, _windows=windows) -> torch.Tensor:
                    _windows.append(encoder_features(_model, w).cpu())
                    return w[:, :1]  # the blended output is not used

                sliding_window_inference(
                    x.unsqueeze(0).float(),
                    roi_size=list(roi_size),
                    sw_batch_size=max(sw_batch_size, 4),
                    predictor=record,
                    overlap=overlap,
                    mode="constant",
                    sw_device=device,
                    device=torch.device("cpu"),
                )
                per_view.append(torch.cat(windows).double().mean(0).numpy())
        result.append(np.stack(per_view))
    return np.stack(result)


def noise_levels(image: torch.Tensor | np.ndarray) -> np.ndarray:
    """``(C,)``: per channel of a preprocessed image ``(C, *spatial)``, the log of its noise
    standard deviation, estimated robustly from the finest wavelet detail coefficients
    (median absolute deviation / 0.6745, Donoho & Johnstone 1994; scikit-image's
    ``estimate_sigma``).

    Noisier, blurred (less fine detail) or differently contrasted inputs move it; the anatomy
    barely does, since the finest details of smooth structures are near zero (images whose
    edges reach the finest scale, such as cell fields, are left to the encoder features).
    """
    from skimage.restoration import estimate_sigma

    x = image.detach().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
    return np.log(np.array([estimate_sigma(channel.astype(np.float64)) for channel in x]) + 1e-8)


def combined_zscore(zscores: Sequence[float]) -> float:
    """One z-score from several out-of-distribution checks: the largest, Sidak-corrected for
    taking the largest of ``k``: ``Phi^-1(Phi(max z)^k)``.

    For independent checks of in-distribution inputs this is again standard normal, so a cut
    at ``inference.ood_quantile`` (0.99) still flags about 1 % of them however many checks
    run; one check alone is returned unchanged. Computed from the log of the upper tail
    ``1 - Phi(z)^k``, as ``Phi(z)^k`` rounds to 1 for the large z-scores of clearly unfamiliar
    inputs.
    """
    from scipy.special import log_ndtr, ndtri_exp

    k = len(zscores)
    if k == 1:
        return float(zscores[0])
    log_tail = float(log_ndtr(-max(float(z) for z in zscores)))  # log(1 - Phi(max z)), exact far out
    if log_tail > -30:
        log_tail = float(np.log(-np.expm1(k * np.log1p(-np.exp(log_tail)))))
    else:  # 1 - (1 - s)^k = k s to double precision for s < 1e-13
        log_tail += float(np.log(k))
    return float(-ndtri_exp(log_tail))


@dataclass
class FeatureDensity:
    """Gaussian density of (standardised) training-image features and reference distances.

    Attributes:
        mean, scale: per-feature mean and standard deviation of the training features (the
            features are standardised first, so the shrinkage target suits every stage).
        precision: inverse Ledoit-Wolf covariance of the standardised features.
        reference: cross-fitted distances of the training images (their unflipped view).
        info: JSON-able notes stored with them (image count, the review threshold, ...).
        noise: the same for the training images' :func:`noise_levels` (``None`` in files
            without that check).
    """

    mean: np.ndarray
    scale: np.ndarray
    precision: np.ndarray
    reference: np.ndarray
    info: dict = field(default_factory=dict)
    noise: FeatureDensity | None = None

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

    def save(self, directory: str | Path) -> Path:
        """Write ``feature_stats.safetensors`` (atomically) into a model directory."""
        from safetensors.numpy import save_file

        from biocnn.io.atomic import atomic_path

        path = Path(directory) / FEATURE_STATS
        parts = {"": self, **({"noise_": self.noise} if self.noise is not None else {})}
        tensors = {
            prefix + k: np.ascontiguousarray(getattr(part, k), dtype=np.float64)
            for prefix, part in parts.items()
            for k in _ARRAYS
        }
        meta = {"format": FORMAT, "info": json.dumps(self.info, sort_keys=True)}
        with atomic_path(path) as tmp:
            save_file(tensors, str(tmp), metadata=meta)
        return path

    @classmethod
    def load(cls, directory: str | Path) -> FeatureDensity | None:
        """The density stored in a model directory, or ``None`` for models trained without one
        (or with an older format, see :data:`OLD_FORMATS`)."""
        from safetensors import SafetensorError, safe_open

        from biocnn.errors import CheckpointError

        path = Path(directory) / FEATURE_STATS
        if not path.is_file():
            return None
        try:
            with safe_open(str(path), framework="numpy") as fh:
                meta = fh.metadata() or {}
                if meta.get("format") in OLD_FORMATS:
                    # Distances to features of another kind, or a threshold on values of another
                    # definition, would be meaningless; the model still predicts without them.
                    log.warning(
                        "%s: feature statistics of an older format (%s: %s); the out-of-distribution "
                        "columns and the review flag stay empty until the model is retrained",
                        path,
                        meta["format"],
                        OLD_FORMATS[meta["format"]],
                    )
                    return None
                if meta.get("format") != FORMAT:
                    raise CheckpointError(f"{path}: not a {FORMAT} file")
                arrays = {k: fh.get_tensor(k) for k in _ARRAYS}
                noise = {k: fh.get_tensor("noise_" + k) for k in _ARRAYS} if "noise_mean" in fh.keys() else None
            info = json.loads(meta.get("info", "{}"))
        except (SafetensorError, OSError, KeyError, ValueError) as exc:
            raise CheckpointError(f"{path}: cannot read feature statistics: {exc}") from None
        return cls(**arrays, info=info, noise=cls(**noise) if noise is not None else None)


_ARRAYS = ("mean", "scale", "precision", "reference")


def _mahalanobis(x: np.ndarray, mean: np.ndarray, scale: np.ndarray, precision: np.ndarray) -> np.ndarray:
    z = (x - mean) / scale
    return np.sqrt(np.maximum(np.einsum("...i,ij,...j->...", z, precision, z), 0.0))
