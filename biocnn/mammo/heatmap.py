"""The patch model applied to a whole view: a heatmap of patch logits and the image score.

:class:`PatchClassifier` is the shared backbone with a classification head trained on patches
(a finding vs normal breast tissue, see :mod:`biocnn.mammo.patches`). The head averages the
backbone's last feature map over the patch and applies dense layers; on a whole view the same
average is taken over every patch-sized window of the feature map (a sliding window whose
stride is the backbone's stride), so one forward pass gives the logit of every window, in the
spirit of the "image-and-heatmaps" screening models (Wu et al. 2019). The image score is the
mean of the ``top_k`` largest window logits among the windows that lie mostly inside the
breast. On a patch-sized input there is one window, so training and scoring share one forward.

:func:`view_heatmaps` is what ``evaluate`` and ``score`` call for logits and heatmaps: the
window map of a :class:`PatchClassifier`, Grad-CAM for the whole-image classifier.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from biocnn.backbone import ConvBackbone
from biocnn.heads import ClassificationHead

# A window counts as breast when at least this fraction of its input pixels is non-zero
# (preprocessing zeroes everything outside the breast).
BREAST_FRACTION = 0.5


class PatchClassifier(nn.Module):
    """Backbone + head trained on ``patch_size`` patches, pooled over a whole view.

    Args:
        spatial_dims: 2 (views).
        in_channels: image channels.
        channels, strides, kernel_size, convs_per_stage, norm, act, dropout: backbone settings
            (see :class:`~biocnn.backbone.ConvBackbone`).
        hidden, head_dropout: dense layers of the head (see
            :class:`~biocnn.heads.ClassificationHead`; the head pools by averaging).
        patch_size: side of the training patches in input pixels (a multiple of the total stride).
        top_k: the image logit is the mean of the ``top_k`` largest window logits.
    """

    def __init__(
        self,
        spatial_dims: int = 2,
        in_channels: int = 1,
        channels: Sequence[int] = (16, 32, 64, 64),
        strides: Sequence[int] | None = (2, 2, 2, 2),
        kernel_size: int = 3,
        convs_per_stage: int = 2,
        norm: str | None = "batch",
        act: str | None = "relu",
        dropout: float | Sequence[float] = 0.0,
        hidden: Sequence[int] = (),
        head_dropout: float = 0.0,
        patch_size: int = 64,
        top_k: int = 5,
    ):
        super().__init__()
        if spatial_dims != 2:
            raise ValueError(f"the patch model scores 2D views, got spatial_dims={spatial_dims}")
        self.backbone = ConvBackbone(
            spatial_dims, in_channels, channels, strides, kernel_size, convs_per_stage, norm, act, dropout
        )
        self.head = ClassificationHead(self.backbone.out_channels, 1, hidden, head_dropout, pool="avg")
        self.stride = int(np.prod(self.backbone.strides))
        if patch_size % self.stride or patch_size < self.stride:
            raise ValueError(f"patch_size ({patch_size}) must be a multiple of the backbone's stride ({self.stride})")
        if top_k < 1:
            raise ValueError(f"top_k must be at least 1, got {top_k}")
        self.patch_size = int(patch_size)
        self.window = patch_size // self.stride  # feature cells per patch side
        self.top_k = int(top_k)

    def window_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Logit of every patch-sized window: ``(batch, rows, cols)``, one per feature cell step.

        Window ``(i, j)`` covers feature cells ``i .. i + window - 1`` (and likewise ``j``);
        a view smaller than a patch is one window over all of it.
        """
        features = self.backbone(x)[-1]
        k = min(self.window, *features.shape[2:])
        pooled = F.avg_pool2d(features, k, stride=1)
        return self.head.mlp(pooled.permute(0, 2, 3, 1)).squeeze(-1)

    def breast_windows(self, x: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
        """Which windows lie mostly inside the breast: ``(batch, rows, cols)`` booleans."""
        inside = (x[:, :1] > 0).float()
        h, w = rows + self.window - 1, cols + self.window - 1  # feature cells
        cells = F.adaptive_avg_pool2d(inside, (h, w)) if inside.shape[2:] != (h, w) else inside
        k = min(self.window, h, w)
        return F.avg_pool2d(cells, k, stride=1)[:, 0, :rows, :cols] >= BREAST_FRACTION

    def image_logits(self, z: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """Mean of the ``top_k`` largest window logits among ``valid`` windows (all windows of a
        view with no valid one): ``(batch,)``."""
        flat, ok = z.flatten(1), valid.flatten(1)
        ok = ok | ~ok.any(dim=1, keepdim=True)
        masked = flat.masked_fill(~ok, float("-inf"))
        k = min(self.top_k, flat.shape[1])
        top = masked.topk(k, dim=1).values
        counts = ok.sum(dim=1).clamp(max=k)
        keep = torch.arange(k, device=z.device)[None] < counts[:, None]
        return torch.where(keep, top, torch.zeros_like(top)).sum(dim=1) / counts

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.window_logits(x)
        return self.image_logits(z, self.breast_windows(x, *z.shape[1:]))

    def heatmap(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Image logits ``(batch,)`` and input-sized heatmaps in ``[0, 1]``: the sigmoid of each
        window's logit placed at the window's centre (outside the breast 0)."""
        z = self.window_logits(x)
        valid = self.breast_windows(x, *z.shape[1:])
        logits = self.image_logits(z, valid)
        heat = torch.where(valid, torch.sigmoid(z.float()), torch.zeros_like(z, dtype=torch.float32))
        return logits, place_windows(heat, x.shape[2:], self.stride, self.window)


def place_windows(heat: torch.Tensor, size: Sequence[int], stride: int, window: int) -> torch.Tensor:
    """Resample window values ``(batch, rows, cols)`` onto the input grid ``size``.

    Feature cell ``i`` of a "same"-padded network of total stride ``s`` is centred on input
    position ``s * i``, so window ``i`` (cells ``i .. i + window - 1``) is centred on
    ``s * (i + (window - 1) / 2)``; bilinear between centres, constant beyond the outer ones.
    """
    offset = (window - 1) / 2
    axes = []
    for n_in, n_win in zip(size, heat.shape[1:]):
        pos = torch.arange(n_in, dtype=torch.float32, device=heat.device) / stride - offset  # window units
        axes.append(2 * pos / max(n_win - 1, 1) - 1)
    gy, gx = torch.meshgrid(*axes, indexing="ij")
    grid = torch.stack([gx, gy], dim=-1).unsqueeze(0).expand(heat.shape[0], *gy.shape, 2)
    out = F.grid_sample(heat[:, None].float(), grid, mode="bilinear", padding_mode="border", align_corners=True)
    return out[:, 0]


def view_heatmaps(model: nn.Module, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits ``(batch,)`` and input-sized heatmaps in ``[0, 1]`` of a batch of views.

    The image score is the model's own forward (for :class:`PatchClassifier` the pooled window
    logits); the heatmap is the window map of a patch model, Grad-CAM for the whole-image
    classifier.
    """
    if isinstance(model, PatchClassifier):
        with torch.no_grad():
            logits, heat = model.heatmap(images)
        return logits.detach(), heat.detach()
    from biocnn.mammo.gradcam import grad_cam

    return grad_cam(model, images)
