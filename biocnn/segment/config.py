"""The segmentation config (``configs/segment_*.yaml``), validated on load."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from biocnn.config import EarlyStopping, StrictModel, TrainConfig


class DataConfig(StrictModel):
    """Where the cases are and how they are read and sampled."""

    train: str
    val: str | None = None
    val_fraction: float = Field(0.2, gt=0, lt=1)
    spatial_dims: Literal[2, 3] = 2
    in_channels: int = Field(3, ge=1)
    # 3D: one file per modality named <case>_<modality>.nii.gz, or one 4D <case>_image.nii.gz.
    modalities: list[str] = []
    # Label values in the masks; class index = position (BraTS: [0, 1, 2, 4]).
    label_values: list[int] = [0, 1]
    # Named groups of label values that ``segment evaluate`` scores as one structure each, next
    # to the single classes (BraTS: {WT: [1, 2, 3, 4], TC: [1, 3, 4], ET: [4]}).
    regions: dict[str, list[int]] = {}
    pixdim: list[float] | None = None
    # Intensity normalisation per case and channel: "nonzero" z-scores over the non-zero voxels
    # (MRI with a zero background: the head), "image" over the whole image (nnU-Net's choice for
    # microscopy), "none" keeps the values read (2D: scaled to [0, 1] by bit depth; data that
    # come z-scored already). Default: "nonzero" in 3D, "none" in 2D.
    normalize: Literal["nonzero", "image", "none"] | None = None
    # 3D: crop each case to the bounding box of its voxels above the case's minimum (the head in
    # an MRI whose background is one constant value, zero or not) before sampling and prediction;
    # predictions are padded back to the input's grid as certain background.
    crop_foreground: bool = False
    patch_size: list[int]
    samples_per_image: int = Field(4, ge=1)
    pos_fraction: float = Field(0.5, ge=0, le=1)
    # Patch centres drawn per class with these relative weights (one per label value, MONAI's
    # RandCropByLabelClassesd, nnU-Net-style oversampling of small classes) instead of the
    # foreground/background split of pos_fraction.
    class_ratios: list[float] | None = None
    cache_rate: float = Field(1.0, ge=0, le=1)

    @model_validator(mode="after")
    def _check(self):
        if len(self.patch_size) != self.spatial_dims:
            raise ValueError(f"patch_size needs {self.spatial_dims} entries")
        if self.spatial_dims == 3 and self.modalities and len(self.modalities) != self.in_channels:
            raise ValueError("in_channels must equal the number of modalities")
        if self.label_values[0] != 0 or len(set(self.label_values)) != len(self.label_values):
            raise ValueError("label_values must start with 0 (background) and be distinct")
        if self.normalize is None:
            self.normalize = "nonzero" if self.spatial_dims == 3 else "none"
        if self.crop_foreground and self.spatial_dims != 3:
            raise ValueError("crop_foreground is for 3D volumes")
        for name, values in self.regions.items():
            if not values or not set(values) <= set(self.label_values[1:]):
                raise ValueError(f"regions.{name} must list foreground label values of {self.label_values}")
        if self.pixdim is not None and len(self.pixdim) != self.spatial_dims:
            raise ValueError(f"pixdim needs {self.spatial_dims} entries")
        if self.class_ratios is not None and (
            len(self.class_ratios) != len(self.label_values)
            or min(self.class_ratios) < 0
            or sum(self.class_ratios) <= 0
        ):
            raise ValueError("class_ratios needs one non-negative weight per label value, not all zero")
        return self


class NetConfig(StrictModel):
    """U-Net settings (see :class:`biocnn.models.UNet`).

    ``dropout`` (encoder, one rate per stage) and ``decoder_dropout`` (deepest first) place
    the spatial dropout used for Monte Carlo sampling; everything before the first non-zero
    rate is deterministic and computed once per window at prediction.
    """

    channels: list[int] = [16, 32, 64, 128]
    strides: list[int] | None = None
    kernel_size: int = 3
    convs_per_stage: int = 2
    norm: str = "batch"
    act: str = "relu"
    dropout: float | list[float] = 0.0
    decoder_dropout: float | list[float] = [0.0, 0.0, 0.3]


class InferenceConfig(StrictModel):
    """Sliding-window and sampling settings used for validation and prediction."""

    roi_size: list[int]
    overlap: float = Field(0.5, ge=0, lt=1)
    sw_batch_size: int = Field(4, ge=1)
    mc_samples: int = Field(20, ge=1)
    mc_batch: int = Field(5, ge=1)
    # Review score (uncertainty.csv, biocnn.segment.review): entropy is summed over the predicted
    # structure dilated by structure_margin voxels; an input is flagged when its structure
    # uncertainty reaches review_threshold (default: the review_quantile of the training images'
    # values, the review budget: about 1 - review_quantile of in-distribution inputs get flagged)
    # or its encoder features lie beyond ood_quantile of the training images' distances.
    structure_margin: int = Field(2, ge=0)
    # Calibration: logits are divided by this before the softmax. None: fitted on the
    # validation split at the end of training (temperature scaling) and written into the
    # model's config.json; 1 turns calibration off.
    temperature: float | None = Field(None, gt=0)
    review_threshold: float | None = Field(None, ge=0)
    # The review statistics (feature density, training structure uncertainty) are measured at
    # the end of training on at most this many training images, a seeded draw (None: all; 0:
    # none, and predict flags nothing). Each image costs 2^d encoder passes, a Monte Carlo pass
    # and 2^d full TTA passes.
    review_images: int | None = Field(None, ge=0)
    review_quantile: float = Field(0.9, gt=0, le=1)
    ood_quantile: float = Field(0.99, gt=0, le=1)


class SegmentConfig(StrictModel):
    """``configs/segment_malaria.yaml`` / ``configs/segment_tumor.yaml``."""

    data: DataConfig
    model: NetConfig = NetConfig()
    train: TrainConfig = TrainConfig(
        epochs=30, batch_size=8, early_stopping=EarlyStopping(monitor="val_dice", mode="max", patience=8)
    )
    inference: InferenceConfig

    @model_validator(mode="after")
    def _check(self):
        if len(self.inference.roi_size) != self.data.spatial_dims:
            raise ValueError(f"inference.roi_size needs {self.data.spatial_dims} entries")
        return self
