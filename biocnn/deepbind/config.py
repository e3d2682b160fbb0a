"""The DeepBind config file (YAML), validated with pydantic.

```yaml
data:
  train: data/CTCF_AC.seq.gz      # FASTA, DeepBind table or BED (+ reference)
  test: data/CTCF_B.seq.gz        # optional, for `evaluate`
  negatives_per_positive: 2       # dinucleotide shuffles per positive when no negatives given
  val_fraction: 0.1
model: {num_motifs: 16, motif_len: 24, pool: max, hidden: 32, dropout: 0.5}
train: {epochs: 20, batch_size: 128, lr: 0.003, early_stopping: {monitor: val_auc, mode: max}}
calibration: {trials: 6, folds: 3, epochs: 8}
```
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from biocnn.config import EarlyStopping, StrictModel, TrainConfig


class DataSection(StrictModel):
    """Where the sequences come from and how negatives are made."""

    train: str | None = None
    test: str | None = None
    labels: str | None = None  # side TSV of id<TAB>label for FASTA inputs
    reference: str | None = None  # reference FASTA for BED inputs
    negatives_per_positive: int = Field(1, ge=1)
    val_fraction: float = Field(0.1, ge=0, lt=1)
    max_train: int | None = Field(None, ge=1)  # subsample positives (quick runs)


class ModelSection(StrictModel):
    """DeepBind architecture (see :class:`biocnn.deepbind.model.DeepBind`)."""

    num_motifs: int = Field(16, ge=1)
    motif_len: int = Field(24, ge=1)
    pool: Literal["max", "maxavg"] = "max"
    hidden: int = Field(32, ge=0)
    dropout: float = Field(0.0, ge=0, lt=1)
    init_scale: float | None = Field(None, gt=0)
    both_strands: bool = True
    # Members trained (seeds seed, seed + 1, ...) and merged into one model that averages them.
    ensemble: int = Field(1, ge=1)


class SearchSpace(StrictModel):
    """Ranges of DeepBind's calibration; log-uniform where the name says so."""

    lr: tuple[float, float] = (5e-4, 2e-2)  # log-uniform
    weight_decay: tuple[float, float] = (1e-8, 1e-4)  # log-uniform
    dropout: list[float] = [0.0, 0.25, 0.5]
    init_scale: tuple[float, float] = (1e-2, 3e-1)  # log-uniform
    hidden: list[int] = [0, 32]
    num_motifs: list[int] = [16]
    pool: list[Literal["max", "maxavg"]] = ["max"]


class CalibrationSection(StrictModel):
    """Random search with k-fold cross-validation."""

    trials: int = Field(6, ge=1)
    folds: int = Field(3, ge=2)
    epochs: int = Field(8, ge=1)
    max_train: int | None = Field(None, ge=1)  # subsample positives for calibration only
    seed: int = 0
    space: SearchSpace = SearchSpace()


def _default_train() -> TrainConfig:
    return TrainConfig(
        epochs=20, batch_size=128, lr=3e-3, early_stopping=EarlyStopping(monitor="val_auc", mode="max", patience=4)
    )


class DeepBindConfig(StrictModel):
    """A whole DeepBind config file."""

    data: DataSection = DataSection()
    model: ModelSection = ModelSection()
    train: TrainConfig = Field(default_factory=_default_train)
    calibration: CalibrationSection = CalibrationSection()

    @model_validator(mode="after")
    def _check(self) -> DeepBindConfig:
        if self.data.val_fraction == 0 and self.train.early_stopping.monitor.startswith("val_"):
            raise ValueError("data.val_fraction is 0, so train.early_stopping.monitor must be train_loss")
        return self


def load_deepbind_config(path, overrides=None) -> DeepBindConfig:
    """Load a DeepBind YAML config (``overrides``: dotted key -> value, e.g. ``data.train``)."""
    from biocnn.config import load_config

    return load_config(path, DeepBindConfig, overrides)
