"""Device choice, mixed precision and seeding shared by training and inference."""

from __future__ import annotations

import contextlib
import os
import random
from collections.abc import Iterator

import numpy as np
import torch


def select_device(preference: str = "auto") -> torch.device:
    """``"auto"``: CUDA when available (the local rank's GPU under torchrun), else CPU."""
    if preference == "cpu" or (preference == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        from biocnn.errors import BiocnnError

        raise BiocnnError("device 'cuda' was requested but no CUDA GPU is available")
    return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))


def autocast(device: torch.device, enabled: bool = True):
    """Mixed precision (float16 autocast) on CUDA; a no-op context on CPU.

    CPU runs stay in float32: bfloat16 autocast on CPU is slower than float32 on most machines
    without AMX and changes results, which would break CPU/GPU comparisons in tests.
    """
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.float16)
    return contextlib.nullcontext()


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices) so a run can be repeated exactly."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@contextlib.contextmanager
def deterministic() -> Iterator[None]:
    """Prefer deterministic kernels inside the block, then restore the caller's settings.

    cuDNN autotuning picks algorithms by timing, so it is off; ops without a deterministic
    CUDA kernel warn rather than fail. ``CUBLAS_WORKSPACE_CONFIG`` makes cuBLAS reproducible
    where it is read (set only when the caller has not set it).
    """
    saved = (
        torch.backends.cudnn.benchmark,
        torch.backends.cudnn.deterministic,
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
    )
    env = os.environ.get("CUBLAS_WORKSPACE_CONFIG")
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True
    torch.use_deterministic_algorithms(True, warn_only=True)
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = saved[0], saved[1]
        torch.use_deterministic_algorithms(saved[2], warn_only=saved[3])
        if env is None:
            os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)


@contextlib.contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Run the block with ``n`` intra-op threads (``None``: unchanged), then restore the caller's number."""
    before = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def is_main_process() -> bool:
    """True in a plain run and on rank 0 under torchrun: the one process that writes files."""
    return int(os.environ.get("RANK", "0")) == 0
