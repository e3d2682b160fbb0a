"""Model directories: ``weights.safetensors`` + ``config.json`` (+ ``metrics.json``).

No pickle anywhere: weights are safetensors, everything else JSON, so loading a model a user
hands us cannot execute code. :func:`load_model` rebuilds the model from ``config.json`` and
checks every weight's name and shape against it before loading.
"""

from __future__ import annotations

import hashlib
import json
import platform
import sys
from collections.abc import Iterable
from importlib import metadata
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from biocnn.errors import CheckpointError
from biocnn.io.atomic import atomic_path, write_json
from biocnn.models import build_model

WEIGHTS = "weights.safetensors"
CONFIG = "config.json"
METRICS = "metrics.json"


def unwrap(model: nn.Module) -> nn.Module:
    """The bare model inside a DistributedDataParallel / DataParallel wrapper."""
    return model.module if hasattr(model, "module") else model


def save_weights(path: str | Path, state: dict[str, torch.Tensor]) -> None:
    """Atomically write a state dict as safetensors."""
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state.items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp))


def load_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a safetensors file, with a clear error for a missing or corrupt one."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: weights file not found")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: cannot read weights: {exc}") from None


def save_model(
    directory: str | Path, model: nn.Module, config: dict[str, Any], metrics: dict[str, Any] | None = None
) -> Path:
    """Write a model directory. ``config`` must hold ``config["model"]`` for :func:`build_model`."""
    directory = Path(directory)
    if "model" not in config or "name" not in config["model"]:
        raise ValueError("config must contain model.name so the model can be rebuilt")
    directory.mkdir(parents=True, exist_ok=True)
    save_weights(directory / WEIGHTS, unwrap(model).state_dict())
    write_json(directory / CONFIG, config)
    if metrics is not None:
        write_json(directory / METRICS, metrics)
    return directory


def read_json(path: str | Path) -> dict[str, Any]:
    """Read a JSON object, with a clear error for a missing or malformed file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: not found")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    return data


def read_model_config(directory: str | Path) -> dict[str, Any]:
    """The ``config.json`` of a model directory."""
    directory = Path(directory)
    if not directory.is_dir():
        raise CheckpointError(f"{directory}: model directory not found")
    return read_json(directory / CONFIG)


def check_state_dict(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Raise :class:`CheckpointError` listing every missing, unexpected or mis-shaped weight."""
    expected = model.state_dict()
    problems = []
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing:
        problems.append(f"missing weights {', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}")
    if unexpected:
        problems.append(f"unexpected weights {', '.join(unexpected[:5])}{' ...' if len(unexpected) > 5 else ''}")
    for key in sorted(set(expected) & set(state)):
        if tuple(expected[key].shape) != tuple(state[key].shape):
            problems.append(
                f"{key} has shape {tuple(state[key].shape)} in the weights but "
                f"{tuple(expected[key].shape)} in the config"
            )
    if problems:
        raise CheckpointError(f"{source}: weights do not match config.json: " + "; ".join(problems))


# What each registered model is, for the message when a task is given another task's model.
MODEL_KINDS = {
    "classifier": "a mammography classifier",
    "unet": "a segmentation (U-Net) model",
    "deepbind": "a DeepBind binding model",
}


def load_model(
    directory: str | Path, device: str | torch.device = "cpu", expect: str | None = None
) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model of a model directory, load its weights, and return it in eval mode.

    ``expect``: the registry name (``"deepbind"``, ``"unet"``, ``"classifier"``) the caller can
    use; another task's model is a :class:`CheckpointError` naming the directory and what it holds.
    """
    directory = Path(directory)
    config = read_model_config(directory)
    if "model" not in config:
        raise CheckpointError(f"{directory / CONFIG}: no 'model' section")
    name = config["model"].get("name") if isinstance(config["model"], dict) else None
    if expect is not None and name != expect:
        what = MODEL_KINDS.get(name, f"a model named {name!r}")
        raise CheckpointError(f"{directory}: holds {what}, not {MODEL_KINDS.get(expect, expect)}")
    model = build_model(config["model"])
    state = load_weights(directory / WEIGHTS)
    check_state_dict(model, state, str(directory))
    model.load_state_dict(state)
    return model.to(device).eval(), config


def update_metrics(directory: str | Path, metrics: dict[str, Any]) -> dict[str, Any]:
    """Merge ``metrics`` into the directory's ``metrics.json`` (created if absent)."""
    path = Path(directory) / METRICS
    current = read_json(path) if path.is_file() else {}
    current.update(metrics)
    write_json(path, current)
    return current


def hash_files(paths: Iterable[str | Path]) -> str:
    """SHA-256 over the names and bytes of ``paths`` (sorted): the training data's fingerprint."""
    digest = hashlib.sha256()
    for p in sorted(Path(p) for p in paths):
        digest.update(p.name.encode())
        with open(p, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def package_versions() -> dict[str, str]:
    """Versions of Python and the packages a result depends on."""
    versions = {"python": platform.python_version(), "platform": sys.platform}
    for pkg in ("biocnn", "torch", "monai", "numpy", "pydicom", "nibabel", "biopython", "scikit-learn"):
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    return versions


def provenance(
    seed: int, data_files: Iterable[str | Path] = (), config_file: str | Path | None = None
) -> dict[str, Any]:
    """What a trained model records about how it was made: seed, versions, data hash."""
    files = [Path(p) for p in data_files]
    return {
        "seed": seed,
        "versions": package_versions(),
        "data_files": [str(p) for p in files],
        "data_sha256": hash_files(files) if files else None,
        "config_file": str(config_file) if config_file else None,
    }
