"""NIfTI volumes via nibabel: checked reading and writing that keeps the input's geometry.

:func:`save_like` writes a new array with the affine and a copy of the header of a reference
image (qform/sform codes, voxel sizes, units), changing only the data type and shape, so a
prediction lines up with its input in any viewer.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from biocnn.errors import InputError
from biocnn.io.atomic import atomic_path

NIFTI_SUFFIXES = (".nii", ".nii.gz")


def is_nifti_file(path: str | Path) -> bool:
    """True for a ``.nii`` or ``.nii.gz`` file name."""
    name = Path(path).name.lower()
    return name.endswith(".nii") or name.endswith(".nii.gz")


def nifti_stem(path: str | Path) -> str:
    """The file name without ``.nii`` / ``.nii.gz``."""
    name = Path(path).name
    for suffix in (".nii.gz", ".nii"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return Path(path).stem


def load_nifti(path: str | Path):
    """Open a NIfTI file (nibabel image, data not yet read); clear error if unreadable."""
    import nibabel as nib

    path = Path(path)
    if not path.is_file():
        raise InputError(path, "file not found")
    if not is_nifti_file(path):
        raise InputError(path, "not a NIfTI file (.nii or .nii.gz)")
    try:
        return nib.load(str(path))
    except Exception as exc:  # nibabel raises ImageFileError, EOFError, zlib errors ...
        raise InputError(path, f"cannot read NIfTI: {exc}") from None


def read_volume(path: str | Path, dtype=np.float32) -> tuple[np.ndarray, object]:
    """Read a NIfTI file as ``(array, nibabel image)``; NaN/Inf voxels are an error."""
    img = load_nifti(path)
    try:
        data = np.asarray(img.dataobj, dtype=dtype)
    except Exception as exc:
        raise InputError(path, f"cannot read NIfTI data: {exc}") from None
    if np.issubdtype(data.dtype, np.floating):
        bad = ~np.isfinite(data)
        if bad.any():
            raise InputError(path, f"{int(bad.sum())} NaN/Inf voxels")
    return data, img


def read_label_volume(path: str | Path) -> tuple[np.ndarray, object]:
    """Read a NIfTI label map as ``(int64 array, nibabel image)``.

    Label maps are often stored as floats (BRATS' ``OTMultiClass`` is float32): integer-valued
    floats are accepted, any other value is an error naming the file (casting would silently
    turn 0.5 into 0).
    """
    data, img = read_volume(path, dtype=np.float64)
    fractional = np.mod(data, 1) != 0
    if fractional.any():
        example = float(data[fractional].flat[0])
        raise InputError(
            path, f"label map holds {int(fractional.sum())} non-integer values (e.g. {example:g}); labels are integers"
        )
    return data.astype(np.int64), img


def save_like(path: str | Path, data: np.ndarray, reference, dtype=None) -> None:
    """Write ``data`` to ``path`` with ``reference``'s affine and header (copied).

    ``data`` may have extra trailing dimensions (class probabilities as a 4D file); the
    header's shape and data type follow ``data`` and ``dtype``, everything else is kept.
    """
    import nibabel as nib

    data = np.asarray(data if dtype is None else np.asarray(data).astype(dtype))
    header = reference.header.copy()
    header.set_data_dtype(data.dtype)
    # Scaling of the reference (scl_slope) must not be applied to our values.
    header.set_slope_inter(1.0, 0.0)
    img = nib.Nifti1Image(data, reference.affine, header)
    # Keep the reference's qform/sform codes (the constructor resets them from the affine).
    img.set_qform(reference.get_qform(), int(reference.header["qform_code"]))
    img.set_sform(reference.get_sform(), int(reference.header["sform_code"]))
    path = Path(path)
    with atomic_path(path) as tmp:
        nib.save(img, str(tmp))
