"""Task heads that sit on :class:`biocnn.backbone.ConvBackbone` feature maps.

* :class:`ClassificationHead`: global pooling + dense layers + dropout (mammography).
* :class:`UNetDecoder`: transposed-conv upsampling (kernel 2, stride 2) with skip
  concatenation (segmentation).
* :class:`BindingHead`: max (and average) pooling over positions + optional hidden layer
  (DeepBind).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.blocks import Convolution
from torch import nn

from biocnn.backbone import Stage


def _global_pool(x: torch.Tensor, pool: str) -> torch.Tensor:
    """Pool every position of ``x`` (batch, channels, *spatial) to (batch, features)."""
    flat = x.flatten(2)
    if pool == "avg":
        return flat.mean(-1)
    if pool == "max":
        return flat.amax(-1)
    if pool == "avgmax":
        return torch.cat([flat.mean(-1), flat.amax(-1)], dim=1)
    raise ValueError(f"pool must be 'avg', 'max' or 'avgmax', got {pool!r}")


def _dense(in_features: int, hidden: Sequence[int], out_features: int, dropout: float) -> nn.Sequential:
    layers: list[nn.Module] = []
    prev = in_features
    for width in hidden:
        layers += [nn.Dropout(dropout), nn.Linear(prev, width), nn.ReLU(inplace=True)]
        prev = width
    layers += [nn.Dropout(dropout), nn.Linear(prev, out_features)]
    return nn.Sequential(*layers)


class ClassificationHead(nn.Module):
    """Global pooling over all positions, then dense layers with dropout.

    Args:
        in_channels: channels of the deepest backbone feature map.
        num_outputs: logits produced (1 for a malignancy score).
        hidden: widths of hidden dense layers (empty for a linear head).
        dropout: dropout rate before each dense layer.
        pool: ``"avg"``, ``"max"`` or ``"avgmax"`` (both, concatenated).
    """

    def __init__(
        self,
        in_channels: int,
        num_outputs: int = 1,
        hidden: Sequence[int] = (64,),
        dropout: float = 0.0,
        pool: str = "avg",
    ):
        super().__init__()
        self.pool = pool
        features = in_channels * (2 if pool == "avgmax" else 1)
        self.mlp = _dense(features, tuple(hidden), num_outputs, dropout)

    def forward(self, features: list[torch.Tensor] | torch.Tensor) -> torch.Tensor:
        x = features[-1] if isinstance(features, (list, tuple)) else features
        return self.mlp(_global_pool(x, self.pool))


class UNetDecoder(nn.Module):
    """U-Net decoder: upsample, concatenate the encoder skip, convolve; repeat to full size.

    Args:
        spatial_dims: 1, 2 or 3.
        encoder_channels: channels of each backbone stage, highest resolution first.
        encoder_strides: stride of each backbone stage; a stage of stride 2 is undone by a
            transposed convolution with kernel 2 and stride 2.
        out_channels: classes of the segmentation (logits per class).
        convs_per_stage: conv blocks after each concatenation.
        norm, act: as for the backbone.
        dropout: channel-wise dropout after each decoder stage (float or one per stage,
            deepest first).

    Odd input sizes: a stride-2 encoder stage maps ``n`` to ``ceil(n / 2)``, so the upsampled
    map can be one position larger than its skip; it is cropped to the skip's size.
    """

    def __init__(
        self,
        spatial_dims: int,
        encoder_channels: Sequence[int],
        encoder_strides: Sequence[int],
        out_channels: int,
        convs_per_stage: int = 2,
        norm: str | tuple | None = "batch",
        act: str | tuple | None = "relu",
        dropout: float | Sequence[float] = 0.0,
    ):
        super().__init__()
        chans = list(encoder_channels)
        levels = len(chans) - 1
        rates = (float(dropout),) * levels if isinstance(dropout, (int, float)) else tuple(dropout)
        if len(rates) != levels:
            raise ValueError(f"decoder dropout needs {levels} rates, got {len(rates)}")
        self.ups = nn.ModuleList()
        self.blocks = nn.ModuleList()
        for i, rate in zip(range(levels - 1, -1, -1), rates):
            stride = int(encoder_strides[i + 1])
            self.ups.append(
                Convolution(
                    spatial_dims,
                    chans[i + 1],
                    chans[i],
                    strides=stride,
                    kernel_size=stride,
                    is_transposed=True,
                    conv_only=True,
                    padding=0,
                    output_padding=0,
                )
                if stride > 1
                else Convolution(spatial_dims, chans[i + 1], chans[i], kernel_size=1, conv_only=True)
            )
            self.blocks.append(Stage(spatial_dims, 2 * chans[i], chans[i], 1, 3, convs_per_stage, norm, act, rate))
        self.final = Convolution(spatial_dims, chans[0], out_channels, kernel_size=1, conv_only=True)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        x = features[-1]
        for up, block, skip in zip(self.ups, self.blocks, reversed(features[:-1])):
            x = up(x)
            x = x[(..., *(slice(0, n) for n in skip.shape[2:]))]
            x = block(torch.cat([skip, x], dim=1))
        return self.final(x)


class BindingHead(nn.Module):
    """DeepBind's head: pool motif activations over positions, optional hidden layer, one score.

    Args:
        num_motifs: channels coming from the motif-detector convolution.
        pool: ``"max"`` or ``"maxavg"`` (max and average concatenated, as DeepBind's
            calibration may choose).
        hidden: width of the hidden layer, or 0 for none (DeepBind uses 32 when on).
        dropout: dropout rate on the pooled features (and hidden layer).
    """

    def __init__(self, num_motifs: int, pool: str = "max", hidden: int = 32, dropout: float = 0.0):
        super().__init__()
        if pool not in ("max", "maxavg"):
            raise ValueError(f"pool must be 'max' or 'maxavg', got {pool!r}")
        self.pool = pool
        features = num_motifs * (2 if pool == "maxavg" else 1)
        self.mlp = _dense(features, (hidden,) if hidden else (), 1, dropout)

    def pooled(self, activations: torch.Tensor) -> torch.Tensor:
        """(batch, motifs, positions) -> (batch, features)."""
        return _global_pool(activations, "max" if self.pool == "max" else "avgmax")

    def forward(self, features: list[torch.Tensor] | torch.Tensor) -> torch.Tensor:
        x = features[-1] if isinstance(features, (list, tuple)) else features
        return self.mlp(self.pooled(x)).squeeze(-1)
