"""Temperature scaling of a trained U-Net's logits (Guo et al. 2017), fitted on validation cases.

A network trained with Dice + cross-entropy and stopped early on validation Dice ranks its
voxels well but its softmax can be far from the observed frequencies (e.g. a small foreground
probability on every background voxel, a haze in the entropy maps). One scalar
``T`` dividing every logit fixes most of that without touching the label map (the argmax of
``z / T`` is the argmax of ``z``). ``T`` is chosen to minimise the negative log-likelihood of
the validation voxels under the deterministic network, then applied to every Monte Carlo,
flip and ensemble sample at prediction, and to the training images' reference values for
the review threshold, so both sides of that comparison are on the same scale.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from biocnn.predict import eval_mode

# Voxels kept per case for the fit: one scalar does not need millions of them, and a BraTS
# volume (8.9 M voxels x classes) would otherwise hold hundreds of MB of logits.
MAX_VOXELS_PER_CASE = 500_000
# Search range for T: beyond it the network is degenerate and something else is wrong.
T_RANGE = (0.05, 20.0)


def negative_log_likelihood(logits: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0) -> float:
    """Mean cross-entropy (nats) of ``labels (N,)`` under ``softmax(logits (N, C) / temperature)``."""
    return float(nn.functional.cross_entropy(logits.double() / temperature, labels.long()))


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """The ``T`` in :data:`T_RANGE` minimising :func:`negative_log_likelihood` (bounded
    scalar search on ``log T``; the likelihood is smooth and unimodal in it in practice)."""
    from scipy.optimize import minimize_scalar

    logits = logits.double()
    labels = labels.long()
    lo, hi = (math.log(t) for t in T_RANGE)
    res = minimize_scalar(
        lambda s: negative_log_likelihood(logits, labels, math.exp(s)),
        bounds=(lo, hi),
        method="bounded",
        options={"xatol": 1e-4},
    )
    return float(math.exp(res.x))


@torch.no_grad()
def validation_logits(
    model: nn.Module,
    images: Sequence[torch.Tensor],
    labels: Sequence[torch.Tensor],
    roi_size: Sequence[int],
    sw_batch_size: int,
    overlap: float,
    seed: int = 0,
    device: torch.device | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Deterministic sliding-window logits of whole cases: ``(N, C)`` and labels ``(N,)``, at
    most :data:`MAX_VOXELS_PER_CASE` voxels per case (a seeded sample, the same every run)."""
    from monai.inferers import sliding_window_inference

    gen = torch.Generator().manual_seed(seed)
    all_logits, all_labels = [], []
    for image, label in zip(images, labels):
        image = torch.as_tensor(image).float()
        with eval_mode(model):
            out = sliding_window_inference(
                image[None],
                roi_size=list(roi_size),
                sw_batch_size=sw_batch_size,
                predictor=model,
                overlap=overlap,
                mode="gaussian",
                sw_device=device or image.device,
                device=torch.device("cpu"),
            )
        z = torch.as_tensor(out)[0].float().reshape(out.shape[1], -1).T
        y = torch.as_tensor(label).reshape(-1).long().cpu()
        if len(y) > MAX_VOXELS_PER_CASE:
            keep = torch.randperm(len(y), generator=gen)[:MAX_VOXELS_PER_CASE]
            z, y = z[keep], y[keep]
        all_logits.append(z)
        all_labels.append(y)
    return torch.cat(all_logits), torch.cat(all_labels)


def calibrate(logits: torch.Tensor, labels: torch.Tensor) -> dict[str, Any]:
    """Fit the temperature and report what it did (stored in the model's ``metrics.json``)."""
    from biocnn.metrics import expected_calibration_error
    from biocnn.segment.evaluate import ECE_BINS

    def ece(temperature: float) -> float:
        conf, pred = torch.softmax(logits.double() / temperature, 1).max(1)
        return expected_calibration_error((pred == labels).numpy().astype(float), conf.numpy(), ECE_BINS)

    t = fit_temperature(logits, labels)
    return {
        "temperature": t,
        "voxels": int(len(labels)),
        "val_nll_before": negative_log_likelihood(logits, labels),
        "val_nll_after": negative_log_likelihood(logits, labels, t),
        "val_ece_before": ece(1.0),
        "val_ece_after": ece(t),
    }
