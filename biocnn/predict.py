"""Run a model over batches of inputs: the one loop that validation and every task's inference share."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Sequence

import numpy as np
import torch
from torch import nn

from biocnn.device import autocast


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put every module of ``model`` in eval mode for the block, then give each its caller's mode back."""
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        yield model
    finally:
        for module, training in modes.items():
            module.train(training)


@torch.no_grad()
def predict(
    model: nn.Module, batches: Iterable[torch.Tensor], device: torch.device | None = None, amp: bool = True
) -> torch.Tensor:
    """Outputs of ``model`` for each batch of inputs, concatenated along the batch axis.

    Args:
        model: the network; it runs in eval mode and without gradients, and its modules'
            train/eval modes are restored afterwards.
        batches: input tensors ``(batch, ...)``, moved to ``device`` one by one.
        device: where the model is (default: where its first parameter is).
        amp: float16 autocast on CUDA (``train.amp`` during validation); no effect on CPU.

    Returns:
        float32 outputs on the CPU, ``(sum of batch sizes, ...)``; empty when there are no batches.
    """
    device = device or next(model.parameters()).device
    out = []
    with eval_mode(model):
        for x in batches:
            with autocast(device, amp):
                out.append(model(x.to(device, non_blocking=True)).float().cpu())
    return torch.cat(out) if out else torch.zeros(0)


def batched(x: torch.Tensor | Sequence[np.ndarray], batch_size: int) -> Iterator[torch.Tensor]:
    """Consecutive batches of ``batch_size`` items from a tensor, or from a list of equally
    shaped arrays (stacked as float32)."""
    for start in range(0, len(x), batch_size):
        chunk = x[start : start + batch_size]
        yield (
            chunk if torch.is_tensor(chunk) else torch.from_numpy(np.stack([np.asarray(c, np.float32) for c in chunk]))
        )
