"""Monte Carlo spatial-dropout sampling through a :class:`biocnn.models.UNet`.

Naive MC dropout runs the whole network T times. Here the network is walked stage by stage
and the batch is repeated T times only at the first *active* dropout layer: everything before
it (the deterministic encoder stages, and decoder convolutions before the first stochastic
decoder dropout) is computed once, and the T samples are batched through the stochastic
rest. With dropout placed late (bottleneck/decoder, configurable per stage) most of the cost
is paid once. The samples have exactly the distribution of naive sampling: the skipped work
is deterministic. When the only dropout sits right before the final 1x1 convolution (the
default), the channel masks are folded into that convolution's weights, so not even the
last feature map is repeated.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn


def _active(dropout: nn.Module) -> bool:
    return dropout.training and getattr(dropout, "p", 0.0) > 0


def _repeat(t: torch.Tensor, n: int) -> torch.Tensor:
    # Sample-major layout: (n * B, ...); sample s of item b is row s * B + b.
    return t.unsqueeze(0).expand(n, *t.shape).reshape(n * t.shape[0], *t.shape[1:])


def has_active_dropout(model: nn.Module) -> bool:
    """True when some dropout layer of ``model`` is in training mode with a non-zero rate."""
    return any(
        isinstance(m, (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d)) and _active(m) for m in model.modules()
    )


@torch.no_grad()
def unet_samples(model: nn.Module, x: torch.Tensor, n: int) -> torch.Tensor:
    """``n`` stochastic forward passes of a UNet sharing the deterministic prefix.

    Returns logits of shape ``(n, B, C, *spatial)``. With no active dropout all samples are
    the deterministic output.
    """
    backbone, decoder = model.backbone, model.decoder
    repeated = False
    features = []
    h = x
    for stage in backbone.stages:
        h = stage.convs(h)
        if not repeated and _active(stage.dropout):
            h, features, repeated = _repeat(h, n), [_repeat(f, n) for f in features], True
        h = stage.dropout(h)
        features.append(h)
    h = features[-1]
    last = len(decoder.blocks) - 1
    for i, (up, block, skip) in enumerate(zip(decoder.ups, decoder.blocks, reversed(features[:-1]))):
        h = up(h)
        h = h[(..., *(slice(0, s) for s in skip.shape[2:]))]
        if h.shape[0] != skip.shape[0]:  # sampling started in the decoder: skips are shared
            skip = _repeat(skip, n)
        h = block.convs(torch.cat([skip, h], dim=1))
        if not repeated and i == last and _foldable(block.dropout, decoder.final):
            return _folded_last_layer(h, block.dropout.p, decoder.final, n)
        if not repeated and _active(block.dropout):
            h, repeated = _repeat(h, n), True
        h = block.dropout(h)
    out = decoder.final(h)
    if not repeated:
        out = _repeat(out, n)
    return out.reshape(n, x.shape[0], *out.shape[1:])


_CHANNEL_DROPOUT = (nn.Dropout1d, nn.Dropout2d, nn.Dropout3d)


def _final_conv(final: nn.Module) -> nn.Module | None:
    conv = getattr(final, "conv", final)
    return conv if isinstance(conv, (nn.Conv1d, nn.Conv2d, nn.Conv3d)) else None


def _foldable(dropout: nn.Module, final: nn.Module) -> bool:
    """Channel dropout feeding straight into a 1x1 convolution (the default placement)."""
    conv = _final_conv(final)
    return (
        _active(dropout)
        and isinstance(dropout, _CHANNEL_DROPOUT)
        and conv is not None
        and all(k == 1 for k in conv.kernel_size)
        and conv.groups == 1
    )


def _folded_last_layer(h: torch.Tensor, p: float, final: nn.Module, n: int) -> torch.Tensor:
    """Samples of ``final(channel_dropout(h))`` without repeating ``h`` n times.

    A channel mask ``m`` (per sample, item and channel) before a 1x1 convolution ``W`` is the
    same as the convolution with masked weights ``W * m``: the n samples become one
    convolution with n x classes output channels, exactly distributed as naive dropout
    (keep each channel with probability 1 - p, scale kept ones by 1 / (1 - p)).
    """
    conv = _final_conv(final)
    b, c = h.shape[:2]
    weight = conv.weight.reshape(conv.out_channels, c).to(h.dtype)
    keep = 1.0 - p
    masks = torch.bernoulli(torch.full((n, b, c), keep, device=h.device, dtype=h.dtype)) / keep
    folded = masks[:, :, None, :] * weight[None, None]  # (n, B, classes, C)
    out = torch.einsum("nbkc,bc...->nbk...", folded, h)
    if conv.bias is not None:
        out = out + conv.bias.to(h.dtype).view(1, 1, -1, *([1] * (h.dim() - 2)))
    return out


@torch.no_grad()
def naive_samples(model: nn.Module, x: torch.Tensor, n: int) -> torch.Tensor:
    """``n`` full forward passes (the baseline): logits ``(n, B, C, *spatial)``."""
    return torch.stack([model(x) for _ in range(n)])


def chunks(total: int, size: int) -> Iterator[int]:
    """Chunk sizes that add up to ``total`` (the last may be smaller)."""
    done = 0
    while done < total:
        step = min(size, total - done)
        yield step
        done += step
