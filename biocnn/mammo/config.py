"""The mammography training config (YAML), validated with pydantic; see configs/mammo_demo.yaml."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from biocnn.config import EarlyStopping, StrictModel, TrainConfig


class DataSection(StrictModel):
    """Where the images are and how patients are split."""

    manifest: str
    label_column: str = Field("label", min_length=1)  # the manifest column holding the 0/1 target
    val_fraction: float = Field(0.2, ge=0, lt=1)
    test_fraction: float = Field(0.0, ge=0, lt=1)
    split_seed: int = 0
    workers: int = Field(0, ge=0)  # DataLoader workers decoding DICOM files before training


class InputSection(StrictModel):
    """Model input size; the breast crop is resized into it keeping its aspect ratio."""

    height: int = Field(256, ge=32)
    width: int = Field(192, ge=32)
    depth: int = Field(16, ge=2)  # slices, tomosynthesis (spatial_dims 3) only


class ModelSection(StrictModel):
    """The view classifier: shared backbone + classification head."""

    spatial_dims: Literal[2, 3] = 2
    channels: list[int] = [16, 32, 64, 128]
    strides: list[int] | None = None
    kernel_size: int = 3
    convs_per_stage: int = Field(2, ge=1)
    norm: str | None = "batch"
    dropout: float = Field(0.0, ge=0, lt=1)
    hidden: list[int] = [64]
    head_dropout: float = Field(0.2, ge=0, lt=1)
    pool: Literal["avg", "max", "avgmax"] = "avgmax"


class AugmentSection(StrictModel):
    """MONAI augmentation of training images."""

    enabled: bool = True
    rotate: float = Field(0.1, ge=0)  # radians
    scale: float = Field(0.1, ge=0)
    translate: float = Field(8.0, ge=0)  # pixels
    flip: bool = True
    gamma: float = Field(0.3, ge=0)
    noise: float = Field(0.01, ge=0)


class PatchSection(StrictModel):
    """The patch model (``method: patch``): trained on patches from the lesion circles (the
    manifest's ``mask`` column) vs normal tissue, scored on a whole view by its window logits."""

    size: int = Field(64, ge=8)  # patch side in model input pixels; a multiple of the backbone's stride
    positives: Literal["finding", "label"] = "finding"  # every view's circles, or those of label-1 views only
    per_epoch: int = Field(2048, ge=8)  # patches per epoch, drawn afresh each epoch
    positive_fraction: float = Field(0.5, gt=0, lt=1)
    negative_margin: float = Field(0.5, ge=0)  # negatives centred this many patch sides from a circle
    shift: float = Field(0.125, ge=0, lt=0.5)  # largest centre shift, fraction of a side
    scale: float = Field(0.2, ge=0, le=1)  # largest zoom, log factor
    gamma: float = Field(0.25, ge=0, le=1)  # largest contrast change, log factor of gamma
    top_k: int = Field(5, ge=1)  # image logit = mean of the top_k window logits inside the breast


def _default_train() -> TrainConfig:
    return TrainConfig(
        epochs=15,
        batch_size=16,
        lr=2e-3,
        weight_decay=1e-4,
        scheduler="cosine",
        early_stopping=EarlyStopping(monitor="val_auc", mode="max", patience=6),
    )


class MammoConfig(StrictModel):
    """Everything ``biocnn mammo train`` needs."""

    data: DataSection
    input: InputSection = InputSection()
    model: ModelSection = ModelSection()
    augment: AugmentSection = AugmentSection()
    method: Literal["image", "patch"] = "image"  # whole-image classifier, or the patch model
    patch: PatchSection = PatchSection()
    train: TrainConfig = Field(default_factory=_default_train)
    balance: Literal["pos_weight", "sampler", "none"] = "pos_weight"
    aggregate: Literal["mean", "max"] = "mean"
    target_sensitivity: float = Field(0.9, gt=0, le=1)  # the operating point chosen on validation
