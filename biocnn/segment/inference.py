"""Sliding-window inference with Monte Carlo dropout, flip TTA and ensembles.

:class:`UncertaintyPredictor` is the ``predictor`` handed to MONAI's
:func:`~monai.inferers.sliding_window_inference`. For each window batch it draws every sample
(models x flips x MC samples) and returns only their running means: the mean class
probabilities and the mean per-sample entropy, ``C + 1`` channels. Those are linear, so
Gaussian blending of overlapping windows is exact for them, and the full-image accumulators
hold ``C + 1`` float32 channels whatever T is (streaming statistics, bounded memory).
Predictive entropy and mutual information are formed afterwards
(:func:`biocnn.segment.uncertainty.maps_from_stats`).
"""

from __future__ import annotations

import contextlib
import itertools
import zlib
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch import nn

from biocnn.backbone import enable_mc_dropout
from biocnn.device import autocast
from biocnn.segment.ood import encoder_features, recording_encoder_features
from biocnn.segment.sampling import chunks, has_active_dropout, naive_samples, unet_samples
from biocnn.segment.uncertainty import SampleAccumulator


def flip_sets(spatial_dims: int, tta: bool) -> list[tuple[int, ...]]:
    """Spatial axes to flip for each TTA view: all 2^d combinations, or just the identity."""
    if not tta:
        return [()]
    axes = range(spatial_dims)
    return [c for r in range(spatial_dims + 1) for c in itertools.combinations(axes, r)]


@contextlib.contextmanager
def case_seed(case_id: str, device: torch.device) -> Iterator[None]:
    """Draw the Monte Carlo dropout masks of the block from a seed given by the case id.

    The same input gets the same samples whatever was sampled before it, in ``predict`` and in
    the training images' review statistics alike (so those equal what ``predict`` gives for
    the training images). The dropout layers draw from the global generators and take no
    ``torch.Generator``, so the CPU generator and ``device``'s are seeded inside
    :func:`torch.random.fork_rng`, which gives the caller's states back afterwards.
    """
    seed = zlib.crc32(case_id.encode())
    cuda = device.type == "cuda"
    index = (device.index if device.index is not None else torch.cuda.current_device()) if cuda else None
    with torch.random.fork_rng(devices=[index] if cuda else []):
        torch.random.default_generator.manual_seed(seed)
        if cuda:
            torch.cuda.default_generators[index].manual_seed(seed)
        yield


@contextlib.contextmanager
def sampling_modes(models: Sequence[nn.Module], mc_samples: int) -> Iterator[list[int]]:
    """Within the block: every model in eval mode, its dropout on when sampling
    (``mc_samples > 1``); yields the samples to draw per model. The caller's modes come back
    afterwards."""
    modes = [{m: m.training for m in model.modules()} for model in models]
    try:
        counts = []
        for model in models:
            model.eval()
            if mc_samples > 1:
                enable_mc_dropout(model)
            counts.append(mc_samples if has_active_dropout(model) else 1)
        yield counts
    finally:
        for saved in modes:
            for module, training in saved.items():
                module.train(training)


class UncertaintyPredictor:
    """Window predictor returning ``(B, C + 1, *roi)``: mean probabilities + mean entropy.

    Each call puts the models in the modes sampling needs (:func:`sampling_modes`) and gives
    them their previous modes back when it returns.

    Args:
        models: one or more UNets (an ensemble pools all their samples).
        spatial_dims: 2 or 3.
        mc_samples: Monte Carlo dropout samples per model (1: deterministic).
        mc_batch: samples pushed through the network at once (memory bound).
        tta: also average over flipped views; the MC samples are spread over the views.
        fast: share the deterministic prefix (``True``) or run full passes (naive baseline).
        amp: float16 autocast on CUDA.
        temperatures: per model, the calibration temperature its logits are divided by
            before the softmax (:mod:`biocnn.segment.temperature`); ``None`` (no fitted
            temperature) or no list at all: 1, uncalibrated.
        features: also record each window's encoder features (:func:`~biocnn.segment.ood.
            encoder_features`) per model and flipped view, from the sampling passes themselves
            (an encoder pass of their own only where encoder dropout is sampled);
            :meth:`take_features` returns them averaged over the windows.
    """

    def __init__(
        self,
        models: Sequence[nn.Module],
        spatial_dims: int,
        mc_samples: int = 20,
        mc_batch: int = 5,
        tta: bool = False,
        fast: bool = True,
        amp: bool = True,
        temperatures: Sequence[float | None] | None = None,
        features: bool = False,
    ):
        self.models = list(models)
        self.features = features
        given = list(temperatures) if temperatures is not None else [None] * len(self.models)
        self.temperatures = [1.0 if t is None else float(t) for t in given]
        if len(self.temperatures) != len(self.models):
            raise ValueError(f"{len(self.temperatures)} temperatures for {len(self.models)} models")
        self.flips = flip_sets(spatial_dims, tta)
        self._recorded = self._no_features()
        self.mc_samples = mc_samples
        with sampling_modes(self.models, mc_samples) as samples:
            self.samples = samples
        self.mc_batch = mc_batch
        self.fast = fast
        self.amp = amp

    def _no_features(self) -> list[list[list[torch.Tensor]]]:
        return [[[] for _ in self.flips] for _ in self.models]

    def take_features(self) -> list[np.ndarray]:
        """Per model, the ``(views, D)`` encoder features recorded since the last call, averaged
        over the windows (``features=True``); the record starts afresh."""
        if not self.features:
            raise ValueError("this predictor does not record features (features=False)")
        out = [np.stack([torch.cat(w).double().mean(0).numpy() for w in views]) for views in self._recorded]
        self._recorded = self._no_features()
        return out

    @torch.no_grad()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        acc = SampleAccumulator()
        draw = unet_samples if self.fast else naive_samples
        with sampling_modes(self.models, self.mc_samples):
            for m, (model, n, temperature) in enumerate(zip(self.models, self.samples, self.temperatures)):
                # Spread the samples over the flipped views (at least one each).
                per_view = [len(part) for part in _split(n, len(self.flips))]
                # The encoder's features come with the first chunk of each view unless its
                # dropout is sampled (then its convolutions see dropped-out inputs).
                hooked = not any(has_active_dropout(stage) for stage in model.backbone.stages)
                for v, (axes, n_view) in enumerate(zip(self.flips, per_view)):
                    dims = [a + 2 for a in axes]
                    xv = x.flip(dims) if dims else x
                    for j, k in enumerate(chunks(n_view, self.mc_batch)):
                        record = self.features and j == 0
                        with autocast(x.device, self.amp):
                            if record and hooked:
                                with recording_encoder_features(model) as passes:
                                    logits = draw(model, xv, k)
                                feats = passes[0]
                            else:
                                logits = draw(model, xv, k)
                                feats = encoder_features(model, xv) if record else None
                        if record:
                            self._recorded[m][v].append(feats.float().cpu())
                        if dims:
                            logits = logits.flip([d + 1 for d in dims])
                        acc.add(logits.float() / temperature if temperature != 1.0 else logits)
        return acc.stats()


def _split(n: int, parts: int) -> list[range]:
    n = max(n, parts)
    base, extra = divmod(n, parts)
    out, start = [], 0
    for i in range(parts):
        size = base + (1 if i < extra else 0)
        out.append(range(start, start + size))
        start += size
    return out


def sliding_stats(
    image: torch.Tensor,
    predictor: UncertaintyPredictor,
    roi_size: Sequence[int],
    sw_batch_size: int = 4,
    overlap: float = 0.5,
    device: torch.device | None = None,
) -> torch.Tensor:
    """Blend window statistics over a whole image ``(C_in, *spatial)`` -> ``(C + 1, *spatial)``.

    The image stays where it is (CPU for big volumes); windows run on ``device``; the
    accumulators are float32 on the image's device.
    """
    from monai.inferers import sliding_window_inference

    device = device or image.device
    out = sliding_window_inference(
        image.unsqueeze(0).float(),
        roi_size=list(roi_size),
        sw_batch_size=sw_batch_size,
        predictor=predictor,
        overlap=overlap,
        mode="gaussian",
        sw_device=device,
        device=image.device,
    )
    return torch.as_tensor(out)[0]
