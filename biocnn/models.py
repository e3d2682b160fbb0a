"""Task models (backbone + head) and the registry that rebuilds them from a checkpoint.

A checkpoint's ``config.json`` stores ``{"model": {"name": ..., **kwargs}}``;
:func:`build_model` turns that back into a module. Task packages register their own models by
adding a ``"module:attribute"`` entry to :data:`MODEL_REGISTRY`, imported lazily so loading a
segmentation model never imports the DeepBind code.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from biocnn.backbone import ConvBackbone
from biocnn.errors import CheckpointError
from biocnn.heads import ClassificationHead, UNetDecoder

MODEL_REGISTRY: dict[str, str] = {
    "classifier": "biocnn.models:Classifier",
    "unet": "biocnn.models:UNet",
    "deepbind": "biocnn.deepbind.model:DeepBind",
    "patch_classifier": "biocnn.mammo.heatmap:PatchClassifier",
}


def build_model(spec: dict[str, Any]) -> nn.Module:
    """Build the model described by ``spec`` = ``{"name": <registry name>, **kwargs}``."""
    spec = dict(spec)
    name = spec.pop("name", None)
    if name not in MODEL_REGISTRY:
        raise CheckpointError(f"unknown model {name!r}; known models: {', '.join(sorted(MODEL_REGISTRY))}")
    module, attr = MODEL_REGISTRY[name].split(":")
    cls = getattr(importlib.import_module(module), attr)
    try:
        return cls(**spec)
    except TypeError as exc:
        raise CheckpointError(f"model {name!r} cannot be built from its config: {exc}") from None


class Classifier(nn.Module):
    """Backbone + classification head (mammography views, 2D; tomosynthesis, 3D).

    Args:
        spatial_dims: 2 or 3 (1 works too).
        in_channels: image channels.
        num_outputs: logits (1 for a binary malignancy score).
        channels, strides, kernel_size, convs_per_stage, norm, act, dropout: backbone settings
            (see :class:`~biocnn.backbone.ConvBackbone`).
        hidden, head_dropout, pool: head settings (see :class:`~biocnn.heads.ClassificationHead`).
    """

    def __init__(
        self,
        spatial_dims: int = 2,
        in_channels: int = 1,
        num_outputs: int = 1,
        channels: Sequence[int] = (16, 32, 64, 128),
        strides: Sequence[int] | None = None,
        kernel_size: int = 3,
        convs_per_stage: int = 2,
        norm: str | None = "batch",
        act: str | None = "relu",
        dropout: float | Sequence[float] = 0.0,
        hidden: Sequence[int] = (64,),
        head_dropout: float = 0.0,
        pool: str = "avg",
    ):
        super().__init__()
        self.backbone = ConvBackbone(
            spatial_dims, in_channels, channels, strides, kernel_size, convs_per_stage, norm, act, dropout
        )
        self.head = ClassificationHead(self.backbone.out_channels, num_outputs, hidden, head_dropout, pool)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.head(self.backbone(x))
        return out.squeeze(-1) if out.shape[-1] == 1 else out


class UNet(nn.Module):
    """U-Net: the shared backbone as encoder and :class:`~biocnn.heads.UNetDecoder`.

    Args:
        spatial_dims: 2 (microscopy) or 3 (NIfTI volumes).
        in_channels: image channels (RGB = 3, one per MRI modality).
        out_channels: classes, background included.
        channels, strides, kernel_size, convs_per_stage, norm, act: encoder settings; the
            decoder mirrors them.
        dropout: channel-wise dropout of the encoder stages (float or one per stage).
        decoder_dropout: channel-wise dropout of the decoder stages (float or one per stage,
            deepest first).
    """

    def __init__(
        self,
        spatial_dims: int = 2,
        in_channels: int = 1,
        out_channels: int = 2,
        channels: Sequence[int] = (16, 32, 64, 128),
        strides: Sequence[int] | None = None,
        kernel_size: int = 3,
        convs_per_stage: int = 2,
        norm: str | None = "batch",
        act: str | None = "relu",
        dropout: float | Sequence[float] = 0.0,
        decoder_dropout: float | Sequence[float] = 0.0,
    ):
        super().__init__()
        self.backbone = ConvBackbone(
            spatial_dims, in_channels, channels, strides, kernel_size, convs_per_stage, norm, act, dropout
        )
        self.decoder = UNetDecoder(
            spatial_dims,
            self.backbone.channels,
            self.backbone.strides,
            out_channels,
            convs_per_stage,
            norm,
            act,
            decoder_dropout,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.backbone(x))
