"""The benchmark's data and its one evaluation, shared by every method.

Cases are found and read by biocnn's own readers (a folder in biocnn's layout or a datalist
JSON; the same case ids, the same checks), so every method sees the same pixels. Every method
writes one label map per test case; :func:`evaluate` scores them all the same way, with MONAI's
``compute_dice`` on binary masks: the nucleus class for nuclei, the BraTS regions for BRATS.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from biocnn.segment.data import Case, find_cases, read_case_2d, read_case_3d


@dataclass(frozen=True)
class Dataset:
    """What the benchmark needs to know about a dataset: its geometry and its labels."""

    name: str
    spatial_dims: int
    in_channels: int
    label_values: tuple[int, ...]
    label_names: tuple[str, ...]
    channel_names: tuple[str, ...]
    # Scored regions: name -> the label values it joins.
    regions: dict[str, tuple[int, ...]]


DATASETS = {
    "nuclei": Dataset("nuclei", 2, 1, (0, 1), ("background", "nucleus"), ("fluorescence",), {"dice": (1,)}),
    "brats": Dataset(
        "brats",
        3,
        2,
        (0, 1, 2, 3, 4),
        ("background", "necrosis", "edema", "non_enhancing", "enhancing"),
        ("FLAIR", "T1c"),
        # The standard BraTS regions: whole tumour, tumour core, enhancing tumour.
        {"dice_wt": (1, 2, 3, 4), "dice_tc": (1, 3, 4), "dice_et": (4,)},
    ),
}


def load_cases(path: str | Path, dataset: Dataset, key: str, limit: int | None = None) -> list[Case]:
    """The labelled cases of a folder or of a datalist's ``key`` list (the first ``limit`` of them)."""
    cases = find_cases(path, dataset.spatial_dims, require_labels=True, datalist_key=key)
    return cases[:limit] if limit else cases


def read_case(case: Case, dataset: Dataset):
    """``(image (C, ...) float32, label values (...) int, NIfTI reference or None)``."""
    if dataset.spatial_dims == 2:
        image, label = read_case_2d(case, dataset.in_channels)
        return image, label.astype(np.int64), None
    image, label, ref = read_case_3d(case, dataset.in_channels)
    return image, label.astype(np.int64), ref


def label_suffix(dataset: Dataset) -> str:
    return ".png" if dataset.spatial_dims == 2 else ".nii.gz"


def write_label(path: Path, label: np.ndarray, ref=None) -> None:
    """A label map (label values) as PNG (2D) or as NIfTI on the reference image's grid (3D)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if ref is None:
        from PIL import Image

        Image.fromarray(label.astype(np.uint8)).save(path)
    else:
        import nibabel as nib

        nib.save(nib.Nifti1Image(label.astype(np.uint8), ref.affine, ref.header), path)


def read_label_map(path: Path) -> np.ndarray:
    """A predicted label map (PNG or NIfTI) as integer label values."""
    if path.suffix == ".png":
        from PIL import Image

        with Image.open(path) as im:
            return np.asarray(im).astype(np.int64)
    import nibabel as nib

    return np.rint(np.asanyarray(nib.load(path).dataobj)).astype(np.int64)


def region_dice(pred: np.ndarray, truth: np.ndarray, values: tuple[int, ...]) -> float:
    """Dice of one region (the union of ``values``) with MONAI; both empty counts as 1."""
    import torch
    from monai.metrics import compute_dice

    p = torch.as_tensor(np.isin(pred, values))[None, None]
    t = torch.as_tensor(np.isin(truth, values))[None, None]
    onehot = [torch.cat([~x, x], 1).float() for x in (p, t)]
    return float(compute_dice(onehot[0], onehot[1], include_background=False, ignore_empty=False)[0, 0])


def evaluate(predictions: dict[str, Path], cases: list[Case], dataset: Dataset) -> dict:
    """Mean region Dice over ``cases`` (every case must have a prediction) and the per-case values."""
    missing = [c.id for c in cases if c.id not in predictions]
    if missing:
        raise RuntimeError(f"no prediction for {len(missing)} test case(s), e.g. {missing[:3]}")
    per_case = {}
    for case in cases:
        _, truth, _ = read_case(case, dataset)
        pred = read_label_map(predictions[case.id])
        if pred.shape != truth.shape:
            raise RuntimeError(f"{predictions[case.id]}: shape {pred.shape}, the label's is {truth.shape}")
        per_case[case.id] = {name: region_dice(pred, truth, values) for name, values in dataset.regions.items()}
    means = {name: float(np.mean([d[name] for d in per_case.values()])) for name in dataset.regions}
    return {**means, "per_case": per_case}
