"""YAML configs validated on load.

Each task defines a pydantic model built from the shared pieces here (:class:`TrainConfig`,
:class:`StrictModel`). :func:`load_config` reads a YAML file and validates it; an unknown key
or a wrong type raises :class:`~biocnn.errors.ConfigError` with a one-line message naming the
file and the key, e.g. ``configs/x.yaml: train.lr: Input should be a valid number``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from biocnn.errors import ConfigError

M = TypeVar("M", bound=BaseModel)


class StrictModel(BaseModel):
    """Base for config sections: unknown keys are errors, not silently ignored."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class EarlyStopping(StrictModel):
    """Stop when ``monitor`` has not improved for ``patience`` epochs."""

    monitor: str = "val_loss"
    mode: Literal["min", "max"] = "min"
    patience: int = Field(10, ge=1)
    min_delta: float = Field(0.0, ge=0)


class TrainConfig(StrictModel):
    """Settings of the shared training loop (:func:`biocnn.train.fit`)."""

    epochs: int = Field(20, ge=1)
    batch_size: int = Field(32, ge=1)
    optimizer: Literal["adam", "adamw", "sgd"] = "adam"
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    scheduler: Literal["none", "cosine", "step", "plateau"] = "none"
    step_size: int = Field(10, ge=1)
    gamma: float = Field(0.1, gt=0, le=1)
    # Epochs of linear LR warm-up (from lr / 10) before the schedule; not with "plateau".
    warmup_epochs: int = Field(0, ge=0)
    grad_clip: float | None = Field(None, gt=0)
    # Training budgets (none by default): stop before the optimizer step that would take the
    # wall clock of this run past max_seconds, or after max_steps steps in all (reproducible).
    max_seconds: float | None = Field(None, gt=0)
    max_steps: int | None = Field(None, ge=1)
    early_stopping: EarlyStopping = EarlyStopping()
    amp: bool = True
    num_workers: int = Field(0, ge=0)
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    progress: bool = True

    @model_validator(mode="after")
    def _warmup_fits(self) -> TrainConfig:
        if self.warmup_epochs and self.scheduler == "plateau":
            raise ValueError("warmup_epochs cannot be combined with scheduler: plateau")
        if self.warmup_epochs >= self.epochs:
            raise ValueError(f"warmup_epochs ({self.warmup_epochs}) must be below epochs ({self.epochs})")
        return self


def format_validation_error(path: str | Path, err: ValidationError) -> str:
    """One line per problem, each ``<file>: <dotted.key>: <message>``."""
    lines = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "<top level>"
        msg = "unknown key" if e["type"] == "extra_forbidden" else e["msg"]
        lines.append(f"{path}: {key}: {msg}")
    return "; ".join(lines)


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping, with a clear error for a missing file or bad syntax."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {str(exc).splitlines()[0]}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys to values")
    return data


def validate_config(data: dict[str, Any], schema: type[M], source: str | Path = "<config>") -> M:
    """Validate a mapping against ``schema``; errors name ``source`` and the key."""
    try:
        return schema.model_validate(data)
    except ValidationError as err:
        raise ConfigError(format_validation_error(source, err)) from None


def load_config(path: str | Path, schema: type[M], overrides: dict[str, Any] | None = None) -> M:
    """Load and validate a YAML config file.

    ``overrides`` maps dotted keys (``"data.train"``) to values that replace the file's, so
    command-line flags such as ``--train FILE`` need no config edits. Relative data paths are
    left as written: they are relative to the working directory, as in Snakemake.
    """
    data = read_yaml(path)
    for dotted, value in (overrides or {}).items():
        if value is None:
            continue
        node = data
        *parents, last = dotted.split(".")
        for key in parents:
            node = node.setdefault(key, {})
        node[last] = value
    return validate_config(data, schema, path)
