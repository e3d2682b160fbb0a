"""Monte Carlo spatial-dropout sampling through a :class:`biocnn.models.UNet`.

Naive MC dropout runs the whole network T times. Here the network is walked stage by stage
and the batch is repeated T times only at the first *active* dropout layer: everything before
it (the deterministic encoder stages, and decoder convolutions before the first stochastic
decoder dropout) is computed once, and the T samples are batched through the stochastic
rest. With dropout placed late (bottleneck/decoder, configurable per stage) most of the cost
is paid once. The samples have exactly the distribution of naive sampling: the skipped work
is deterministic.
"""

from __future__ import annotations

from typing import Iterator

import torch
from torch import nn


def _active(dropout: nn.Module) -> bool:
    return dropout.training and getattr(dropout, "p", 0.0) > 0


def _repeat(t: torch.Tensor, n: int) -> torch.Tensor:
    # Sample-major layout: (n * B, ...); sample s of item b is row s * B + b.
    return t.unsqueeze(0).expand(n, *t.shape).reshape(n * t.shape[0], *t.shape[1:])


def has_active_dropout(model: nn.Module) -> bool:
    """True when some dropout layer of ``model`` is in training mode with a non-zero rate."""
    return any(isinstance(m, (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d)) and _active(m)
               for m in model.modules())


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
    for up, block, skip in zip(decoder.ups, decoder.blocks, reversed(features[:-1])):
        h = up(h)
        h = h[(..., *(slice(0, s) for s in skip.shape[2:]))]
        if h.shape[0] != skip.shape[0]:  # sampling started in the decoder: skips are shared
            skip = _repeat(skip, n)
        h = block.convs(torch.cat([skip, h], dim=1))
        if not repeated and _active(block.dropout):
            h, repeated = _repeat(h, n), True
        h = block.dropout(h)
    out = decoder.final(h)
    if not repeated:
        out = _repeat(out, n)
    return out.reshape(n, x.shape[0], *out.shape[1:])


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
