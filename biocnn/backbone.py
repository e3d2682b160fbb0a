"""The shared convolutional backbone: one class for 1D sequences, 2D images and 3D volumes.

All three task families build on :class:`ConvBackbone`:

* mammography: ``spatial_dims=2`` (views) or ``3`` (tomosynthesis) + a classification head;
* segmentation: ``spatial_dims=2`` or ``3`` as the U-Net encoder, its per-stage feature maps
  feeding the decoder's skip connections;
* DeepBind: ``spatial_dims=1``, one stage whose kernels are the motif detectors.

The blocks are MONAI's :class:`~monai.networks.blocks.Convolution` (conv + norm + activation);
what MONAI does not offer is channel-wise ("spatial") dropout for 1D, so the dropout layer is
``nn.Dropout1d/2d/3d`` chosen by ``spatial_dims``. Spatial dropout zeroes whole feature maps,
which is what makes Monte Carlo dropout sampling give spatially coherent uncertainty
(Soleimany et al. 2019).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.blocks import Convolution
from torch import nn

_SPATIAL_DROPOUT = {1: nn.Dropout1d, 2: nn.Dropout2d, 3: nn.Dropout3d}


def spatial_dropout(spatial_dims: int, rate: float) -> nn.Module:
    """Channel-wise dropout for ``spatial_dims`` (identity when ``rate`` is 0)."""
    if spatial_dims not in _SPATIAL_DROPOUT:
        raise ValueError(f"spatial_dims must be 1, 2 or 3, got {spatial_dims}")
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"dropout rate must be in [0, 1), got {rate}")
    return _SPATIAL_DROPOUT[spatial_dims](rate) if rate > 0 else nn.Identity()


class Stage(nn.Module):
    """One backbone stage: a (possibly strided) conv block, more conv blocks, spatial dropout.

    Args:
        spatial_dims: 1, 2 or 3.
        in_channels: channels coming in.
        out_channels: channels going out.
        stride: stride of the first convolution (2 halves the resolution, 1 keeps it).
        kernel_size: convolution kernel size.
        convs: number of conv blocks in the stage (at least 1).
        norm: MONAI norm name (``"batch"``, ``"instance"``, ...) or ``None``.
        act: MONAI activation name (``"relu"``, ``"leakyrelu"``, ...) or ``None``.
        dropout: channel-wise dropout rate applied to the stage output.
        padding: ``"same"`` keeps ``ceil(n / stride)`` positions; ``"valid"`` pads nothing
            (DeepBind pads the sequences itself).
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        stride: int = 1,
        kernel_size: int = 3,
        convs: int = 2,
        norm: str | tuple | None = "batch",
        act: str | tuple | None = "relu",
        dropout: float = 0.0,
        padding: str = "same",
    ):
        super().__init__()
        if convs < 1:
            raise ValueError("a stage needs at least one convolution")
        if padding not in ("same", "valid"):
            raise ValueError(f"padding must be 'same' or 'valid', got {padding!r}")
        pad = None if padding == "same" else 0  # None lets MONAI compute (k - 1) // 2
        blocks = []
        for i in range(convs):
            blocks.append(
                Convolution(
                    spatial_dims,
                    in_channels if i == 0 else out_channels,
                    out_channels,
                    strides=stride if i == 0 else 1,
                    kernel_size=kernel_size,
                    act=act,
                    norm=norm,
                    padding=pad,
                    # A norm layer makes the conv bias redundant.
                    bias=norm is None,
                    conv_only=act is None and norm is None,
                )
            )
        self.convs = nn.Sequential(*blocks)
        self.dropout = spatial_dropout(spatial_dims, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.convs(x))


class ConvBackbone(nn.Module):
    """A stack of conv stages that returns the feature map of every stage.

    Args:
        spatial_dims: 1 (sequences), 2 (images) or 3 (volumes).
        in_channels: input channels (4 for one-hot DNA, 1 for a mammogram, one per MRI
            modality).
        channels: output channels of each stage; its length is the number of stages.
        strides: stride of each stage's first convolution (same length as ``channels``).
            Defaults to 1 for the first stage and 2 for the others.
        kernel_size: convolution kernel size for every stage (DeepBind: the motif length).
        convs_per_stage: conv blocks per stage.
        norm: MONAI norm name or ``None``.
        act: MONAI activation name or ``None``.
        dropout: channel-wise dropout rate after each stage; a single float for all stages or
            one rate per stage (e.g. ``(0, 0, 0.2, 0.2)`` to keep the early stages
            deterministic so Monte Carlo sampling can reuse them).
        padding: ``"same"`` or ``"valid"`` (see :class:`Stage`).

    ``forward(x)`` returns a list with one tensor per stage, highest resolution first; the last
    one is the deepest. With ``padding="same"`` a stage of stride 2 maps ``n`` positions to
    ``ceil(n / 2)``, so odd input sizes are fine.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        channels: Sequence[int] = (16, 32, 64, 128),
        strides: Sequence[int] | None = None,
        kernel_size: int = 3,
        convs_per_stage: int = 2,
        norm: str | tuple | None = "batch",
        act: str | tuple | None = "relu",
        dropout: float | Sequence[float] = 0.0,
        padding: str = "same",
    ):
        super().__init__()
        if spatial_dims not in (1, 2, 3):
            raise ValueError(f"spatial_dims must be 1, 2 or 3, got {spatial_dims}")
        channels = tuple(int(c) for c in channels)
        if not channels:
            raise ValueError("channels must name at least one stage")
        strides = tuple(strides) if strides is not None else (1,) + (2,) * (len(channels) - 1)
        rates = (float(dropout),) * len(channels) if isinstance(dropout, (int, float)) else tuple(dropout)
        if len(strides) != len(channels) or len(rates) != len(channels):
            raise ValueError(
                f"channels ({len(channels)}), strides ({len(strides)}) and dropout ({len(rates)}) "
                "must have one entry per stage"
            )
        self.spatial_dims = spatial_dims
        self.in_channels = in_channels
        self.channels = channels
        self.strides = strides
        self.stages = nn.ModuleList()
        prev = in_channels
        for out, stride, rate in zip(channels, strides, rates):
            self.stages.append(
                Stage(spatial_dims, prev, out, stride, kernel_size, convs_per_stage, norm, act, rate, padding)
            )
            prev = out

    @property
    def out_channels(self) -> int:
        """Channels of the deepest feature map (what a head consumes)."""
        return self.channels[-1]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        if x.dim() != self.spatial_dims + 2:
            raise ValueError(
                f"expected a {self.spatial_dims}D input of shape (batch, channels, "
                f"{', '.join('n' * self.spatial_dims)}), got shape {tuple(x.shape)}"
            )
        features = []
        for stage in self.stages:
            x = stage(x)
            features.append(x)
        return features


def enable_mc_dropout(model: nn.Module, enabled: bool = True) -> int:
    """Put only the dropout layers of ``model`` in training mode (Monte Carlo dropout).

    Batch-norm layers stay in eval mode so their running statistics are used and not
    updated. Returns the number of dropout layers switched.
    """
    n = 0
    for module in model.modules():
        if isinstance(module, (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d)):
            module.train(enabled)
            n += 1
    return n
