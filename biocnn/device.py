"""Device choice, mixed precision and seeding shared by training and inference."""

from __future__ import annotations

import contextlib
import os
import random

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


def make_deterministic() -> None:
    """Prefer deterministic kernels (cuDNN autotuning picks algorithms by timing)."""
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True
    # Some ops have no deterministic CUDA kernel; warn rather than fail for those.
    torch.use_deterministic_algorithms(True, warn_only=True)
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
