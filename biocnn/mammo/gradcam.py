"""Grad-CAM on the last backbone stage, overlay PNGs, and the pointing game.

Grad-CAM (Selvaraju et al. 2017): weight each channel of the last stage's feature map by the
spatial mean of the malignancy logit's gradient, sum, keep the positive part, upsample to the
input. Works for 2D views and 3D volumes alike.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from biocnn.io.atomic import atomic_path


def grad_cam(model: nn.Module, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits ``(batch,)`` and heatmaps ``(batch, *spatial)`` in ``[0, 1]``, input-sized.

    ``model`` is a :class:`~biocnn.models.Classifier` in eval mode (batch norm frozen, so the
    images of a batch do not influence each other's gradients).
    """
    with torch.enable_grad():
        features = model.backbone(images)
        last = features[-1]
        logits = model.head(features).reshape(len(images), -1)[:, 0]
        grads = torch.autograd.grad(logits.sum(), last)[0]
    spatial = tuple(range(2, last.dim()))
    weights = grads.mean(dim=spatial, keepdim=True)
    cam = F.relu((weights * last).sum(dim=1, keepdim=True)).detach().float()
    mode = "bilinear" if cam.dim() == 4 else "trilinear"
    cam = F.interpolate(cam, size=images.shape[2:], mode=mode, align_corners=False)[:, 0]
    flat = cam.flatten(1)
    low, high = flat.min(1).values, flat.max(1).values
    cam = (cam - low.view(-1, *[1] * (cam.dim() - 1))) / (high - low).clamp_min(1e-8).view(-1, *[1] * (cam.dim() - 1))
    return logits.detach(), cam


def pointing_hit(cam: np.ndarray, mask: np.ndarray, tolerance: int = 0) -> bool:
    """Pointing game: does the heatmap's maximum fall inside ``mask`` (within ``tolerance`` px)?"""
    y, x = np.unravel_index(int(np.argmax(cam)), cam.shape)
    if tolerance <= 0:
        return bool(mask[y, x])
    y0, x0 = max(0, y - tolerance), max(0, x - tolerance)
    return bool(mask[y0:y + tolerance + 1, x0:x + tolerance + 1].any())


def overlay_png(image: np.ndarray, cam: np.ndarray, path: str | Path, title: str = "") -> None:
    """Write the grey image with the heatmap blended on top (jet, weighted by the heat)."""
    from matplotlib import colormaps
    from PIL import Image, ImageDraw

    if image.ndim == 3:  # volume: the slice where the heat peaks
        z = int(np.unravel_index(int(np.argmax(cam)), cam.shape)[0])
        image, cam = image[z], cam[z]
    grey = np.clip(image, 0, 1)[..., None].repeat(3, axis=-1)
    heat = colormaps["jet"](np.clip(cam, 0, 1))[..., :3]
    alpha = 0.5 * np.clip(cam, 0, 1)[..., None]
    rgb = ((1 - alpha) * grey + alpha * heat) * 255
    im = Image.fromarray(rgb.astype(np.uint8))
    if title:
        ImageDraw.Draw(im).text((3, 3), title, fill=(255, 255, 0))
    with atomic_path(path) as tmp:
        im.save(tmp, format="PNG")
