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
    cam = upsample_aligned(cam, images.shape[2:], int(np.prod(model.backbone.strides)))[:, 0]
    flat = cam.flatten(1)
    low, high = flat.min(1).values, flat.max(1).values
    cam = (cam - low.view(-1, *[1] * (cam.dim() - 1))) / (high - low).clamp_min(1e-8).view(-1, *[1] * (cam.dim() - 1))
    return logits.detach(), cam


def upsample_aligned(cam: torch.Tensor, size, stride: int) -> torch.Tensor:
    """Upsample a feature-grid map to the input grid where each cell really sits.

    With "same" padding a stride-``s`` network's cell ``i`` is centred on input position
    ``s * i``, not on ``s * i + (s - 1) / 2`` as a plain resize assumes; the difference
    (3.5 pixels at stride 8) matters when the pointing game asks for a pixel inside a lesion.
    """
    axes = []
    for n_in, n_cells in zip(size, cam.shape[2:]):
        pos = torch.arange(n_in, dtype=torch.float32, device=cam.device) / stride  # in cell units
        axes.append(2 * pos / max(n_cells - 1, 1) - 1)  # align_corners=True coordinates
    grids = torch.meshgrid(*axes, indexing="ij")
    # grid_sample wants (x, y[, z]) order, i.e. the last spatial axis first.
    grid = torch.stack(list(reversed(grids)), dim=-1).unsqueeze(0).expand(cam.shape[0], *grids[0].shape, len(axes))
    return F.grid_sample(cam, grid, mode="bilinear", padding_mode="border", align_corners=True)


def pointing_hit(cam: np.ndarray, mask: np.ndarray, tolerance: int = 0) -> bool:
    """Pointing game: does the heatmap's maximum fall inside ``mask`` (within ``tolerance`` px)?"""
    y, x = np.unravel_index(int(np.argmax(cam)), cam.shape)
    if tolerance <= 0:
        return bool(mask[y, x])
    y0, x0 = max(0, y - tolerance), max(0, x - tolerance)
    return bool(mask[y0 : y + tolerance + 1, x0 : x + tolerance + 1].any())


def overlay_png(
    image: np.ndarray, cam: np.ndarray, path: str | Path, title: str = "", outline: np.ndarray | None = None
) -> None:
    """Write the grey image with the heatmap blended on top (jet, weighted by the heat); with
    ``outline`` (a lesion mask in the image's grid) its border drawn in green."""
    from matplotlib import colormaps
    from PIL import Image, ImageDraw

    if image.ndim == 3:  # volume: the slice where the heat peaks
        z = int(np.unravel_index(int(np.argmax(cam)), cam.shape)[0])
        image, cam = image[z], cam[z]
    grey = np.clip(image, 0, 1)[..., None].repeat(3, axis=-1)
    heat = colormaps["jet"](np.clip(cam, 0, 1))[..., :3]
    alpha = 0.5 * np.clip(cam, 0, 1)[..., None]
    rgb = ((1 - alpha) * grey + alpha * heat) * 255
    if outline is not None and outline.shape == rgb.shape[:2]:
        from scipy import ndimage

        border = outline & ~ndimage.binary_erosion(outline, iterations=2)
        rgb[border] = (0, 255, 0)
    im = Image.fromarray(rgb.astype(np.uint8))
    if title:
        ImageDraw.Draw(im).text((3, 3), title, fill=(255, 255, 0))
    with atomic_path(path) as tmp:
        im.save(tmp, format="PNG")
