"""Tumor-like multi-modal MRI volumes (BraTS style), written as NIfTI.

A brain-like ellipsoid with smooth tissue texture holds a tumor: edema (label 2) around a
core of necrosis (label 1) inside an enhancing rim (label 4). Each modality (t1, t1ce, t2,
flair) shows the regions with its own contrast, as in BraTS, so no single modality separates
all classes. A smooth multiplicative bias field and noise are added. The affine is
LPS-like (``diag(-1, -1, 1)``) so readers must honour orientation. ``shift`` makes
out-of-distribution volumes (stronger noise, blur, a non-linear intensity change).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy import ndimage

from biocnn.io.atomic import atomic_path

MODALITIES = ("t1", "t1ce", "t2", "flair")
LABEL_VALUES = (0, 1, 2, 4)
SHIFTS = ("none", "noise", "blur", "intensity")
# Mean intensity of (brain, edema, necrosis, enhancing) per modality.
_CONTRAST = {
    "t1": (0.60, 0.48, 0.30, 0.55),
    "t1ce": (0.60, 0.52, 0.30, 1.00),
    "t2": (0.50, 0.85, 1.00, 0.70),
    "flair": (0.45, 1.00, 0.60, 0.80),
}


def tumor_volume(
    rng: np.random.Generator, shape=(48, 48, 48), shift: str = "none", severity: float = 1.0
) -> tuple[np.ndarray, np.ndarray]:
    """One case: ``(float32 (modalities, X, Y, Z), uint8 label (X, Y, Z) in {0,1,2,4})``."""
    if shift not in SHIFTS:
        raise ValueError(f"shift must be one of {SHIFTS}, got {shift!r}")
    shape = tuple(int(s) for s in shape)
    grid = np.stack(np.meshgrid(*[np.arange(s, dtype=np.float32) for s in shape], indexing="ij"))
    centre = np.array(shape, np.float32)[:, None, None, None] / 2
    rel = (grid - centre) / (np.array(shape, np.float32)[:, None, None, None] / 2)
    brain = ((rel / rng.uniform(0.75, 0.9, 3)[:, None, None, None]) ** 2).sum(0) < 1
    # Tumor centre inside the brain, radii relative to the volume size.
    size = min(shape)
    tc = np.array(shape) / 2 + rng.uniform(-0.18, 0.18, 3) * np.array(shape)
    d = np.sqrt(((grid - tc[:, None, None, None]) ** 2).sum(0))
    # Irregular boundaries: radii perturbed by smooth noise.
    wobble = ndimage.gaussian_filter(rng.normal(0, 1, shape), 3) * 8
    r_core = rng.uniform(0.08, 0.14) * size
    r_enh = r_core + rng.uniform(0.03, 0.06) * size
    r_edema = r_enh + rng.uniform(0.06, 0.12) * size
    label = np.zeros(shape, np.uint8)
    label[(d < r_edema + wobble * 0.6 * size / 48) & brain] = 2
    label[(d < r_enh + wobble * 0.3 * size / 48) & brain] = 4
    label[(d < r_core + wobble * 0.2 * size / 48) & brain] = 1
    texture = ndimage.gaussian_filter(rng.normal(0, 1, shape), 1.5) * 0.6
    coeffs = rng.normal(0, 0.15, (len(MODALITIES), 3))
    images = []
    for m, mod in enumerate(MODALITIES):
        b, e, n, en = _CONTRAST[mod]
        vol = np.zeros(shape, np.float32)
        vol[brain] = b
        vol[label == 2] = e
        vol[label == 1] = n
        vol[label == 4] = en
        vol += texture * 0.08 * brain
        # Bias field: smooth, multiplicative, different per modality.
        bias = 1 + (coeffs[m][:, None, None, None] * rel).sum(0)
        vol = vol * bias * brain
        vol = ndimage.gaussian_filter(vol, 0.6)
        noise = 0.03
        if shift == "noise":
            noise = 0.03 + 0.12 * severity
        elif shift == "blur":
            vol = ndimage.gaussian_filter(vol, 1.0 + 1.0 * severity)
        elif shift == "intensity":
            vol = np.clip(vol, 0, None) ** (1 + 1.5 * severity)
        vol = vol + np.abs(rng.normal(0, noise, shape)) * (vol > 0.01) + rng.normal(0, noise / 3, shape)
        images.append(np.clip(vol, 0, None) * 1000)
    return np.stack(images).astype(np.float32), label


def tumor_affine(shape) -> np.ndarray:
    """LPS-like 1 mm affine with the volume centred on the origin."""
    affine = np.diag([-1.0, -1.0, 1.0, 1.0])
    affine[:3, 3] = [shape[0] / 2, shape[1] / 2, -shape[2] / 2]
    return affine


def write_tumor(
    out: str | Path, n: int, seed: int, shape=(48, 48, 48), shift: str = "none", severity: float = 1.0
) -> list[str]:
    """Write ``n`` cases as ``out/case_XXX/case_XXX_<modality>.nii.gz`` + ``..._seg.nii.gz``."""
    import nibabel as nib

    out = Path(out)
    rng = np.random.default_rng(seed)
    names = []
    for i in range(n):
        images, label = tumor_volume(rng, shape, shift, severity)
        name = f"case_{i:03d}"
        affine = tumor_affine(images.shape[1:])
        for mod, vol in zip(MODALITIES, images):
            _save(nib.Nifti1Image(vol, affine), out / name / f"{name}_{mod}.nii.gz")
        _save(nib.Nifti1Image(label, affine), out / name / f"{name}_seg.nii.gz")
        names.append(name)
    return names


def _save(img, path: Path) -> None:
    img.set_qform(img.affine, 1)
    img.set_sform(img.affine, 1)
    img.header.set_xyzt_units("mm", "sec")
    with atomic_path(path) as tmp:
        import nibabel as nib

        nib.save(img, str(tmp))
