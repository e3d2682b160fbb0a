"""2D microscopy images and label masks: PNG and TIFF, grayscale or RGB, 8 or 16 bit.

Images are returned channel-first as float32 scaled to [0, 1] by their bit depth (8-bit / 255,
16-bit / 65535) so that an 8-bit PNG and the same field saved as a 16-bit TIFF give the same
numbers. Label masks are returned as integer arrays. Every problem raises
:class:`~biocnn.errors.InputError` naming the file.

An alpha channel (grey + alpha, RGBA) is no image content: a constant one (published datasets
such as the Data Science Bowl nuclei store fully opaque RGBA) is dropped, a varying one is an
error, because dropping it would silently show the model pixels the file marks as transparent.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from biocnn.errors import InputError
from biocnn.io.atomic import atomic_path

IMAGE_SUFFIXES = (".png", ".tif", ".tiff")


def is_image_file(path: str | Path) -> bool:
    """True for a PNG or TIFF file name."""
    return Path(path).suffix.lower() in IMAGE_SUFFIXES


def _read_raw(path: Path) -> np.ndarray:
    if not path.is_file():
        raise InputError(path, "file not found")
    if not is_image_file(path):
        raise InputError(path, f"not a PNG or TIFF file (suffix {path.suffix!r})")
    try:
        if path.suffix.lower() == ".png":
            from PIL import Image

            with Image.open(path) as im:
                im.load()
                if im.mode == "P":  # palette PNGs: expand to colours
                    im = im.convert("RGBA" if "transparency" in im.info else "RGB")
                return np.asarray(im)
        import tifffile

        return tifffile.imread(path)
    except InputError:
        raise
    except Exception as exc:  # PIL and tifffile raise many types for corrupt files
        raise InputError(path, f"cannot read image: {exc}") from None


def _scale(path: Path, arr: np.ndarray) -> np.ndarray:
    if arr.dtype == np.uint8:
        return arr.astype(np.float32) / 255.0
    if arr.dtype == np.uint16:
        return arr.astype(np.float32) / 65535.0
    if arr.dtype == bool:
        return arr.astype(np.float32)
    if np.issubdtype(arr.dtype, np.floating):
        out = arr.astype(np.float32)
        if not np.isfinite(out).all():
            raise InputError(path, f"{int((~np.isfinite(out)).sum())} NaN/Inf pixel values")
        return out
    raise InputError(path, f"unsupported pixel type {arr.dtype} (use 8 or 16 bit, or float)")


def _drop_alpha(path: Path, arr: np.ndarray) -> np.ndarray:
    """``(C, H, W)`` with C = 2 (grey + alpha) or 4 (RGBA) -> without the alpha channel, which
    must be constant; other channel counts are returned as they are."""
    if arr.shape[0] not in (2, 4):
        return arr
    alpha = arr[-1]
    if alpha.size and alpha.min() != alpha.max():
        raise InputError(
            path,
            f"alpha (transparency) channel varies ({alpha.min()} to {alpha.max()}); biocnn reads opaque images "
            "only: flatten the image or save it without alpha",
        )
    return arr[:-1]


def read_image(path: str | Path) -> np.ndarray:
    """Read a 2D image as float32 ``(channels, height, width)`` in [0, 1] (floats: as stored).

    Grayscale gives one channel, RGB three, whatever the size; a constant alpha channel is
    dropped, a varying one is an error. A TIFF stored channel-first (``(C, H, W)`` with C <= 4
    and W > 4) is accepted as well.
    """
    path = Path(path)
    arr = _read_raw(path)
    if arr.ndim == 2:
        arr = arr[None]
    elif arr.ndim == 3 and arr.shape[0] <= 4 and arr.shape[-1] > 4:  # channel-first TIFF
        arr = _drop_alpha(path, arr)
    elif arr.ndim == 3 and arr.shape[-1] in (2, 3, 4):  # (H, W, gray + alpha | RGB | RGBA), even 1 x 1
        arr = _drop_alpha(path, np.moveaxis(arr, -1, 0))
    else:
        raise InputError(
            path,
            f"expected a 2D grayscale or RGB image, got an array of shape {arr.shape} "
            "(a 3D volume belongs in a NIfTI file for a 3D model)",
        )
    return np.ascontiguousarray(_scale(path, arr))


# ITU-R BT.601 luma weights, the ones PIL's ``convert("L")`` uses.
GREY_WEIGHTS = (0.299, 0.587, 0.114)


def to_grey(image: np.ndarray) -> np.ndarray:
    """``(3, H, W)`` RGB -> ``(1, H, W)`` grey.

    Grey stored as RGB (the same value in R, G and B, as fluorescence images often are) gives
    that value exactly; a colour image gives its luma (ITU-R BT.601 weights, as PIL), so a
    1-channel model can still be shown, and flag, a colour image unlike its training data.
    """
    if (image[0] == image[1]).all() and (image[1] == image[2]).all():
        return image[:1].copy()
    weights = np.asarray(GREY_WEIGHTS, np.float32)[:, None, None]
    return (image * weights).sum(0, keepdims=True, dtype=np.float32)


def read_label(path: str | Path) -> np.ndarray:
    """Read a 2D label mask as an int64 ``(height, width)`` array of label values."""
    path = Path(path)
    arr = _read_raw(path)
    if arr.ndim == 3 and arr.shape[-1] in (2, 4):
        arr = np.moveaxis(_drop_alpha(path, np.moveaxis(arr, -1, 0)), 0, -1)
        arr = arr[..., 0] if arr.shape[-1] == 1 else arr
    if arr.ndim == 3 and arr.shape[-1] == 3:
        rgb = arr
        if not ((rgb == rgb[..., :1]).all()):
            raise InputError(path, "label mask is a colour image; expected one integer label per pixel")
        arr = rgb[..., 0]
    if arr.ndim != 2:
        raise InputError(path, f"expected a 2D label mask, got an array of shape {arr.shape}")
    if np.issubdtype(arr.dtype, np.floating):
        if not np.isfinite(arr).all() or not np.equal(np.mod(arr, 1), 0).all():
            raise InputError(path, "label mask holds non-integer values")
    return arr.astype(np.int64)


def write_label(path: str | Path, labels: np.ndarray) -> None:
    """Write an integer mask as PNG (8 bit when it fits, else 16 bit) or TIFF, by suffix."""
    labels = np.asarray(labels)
    dtype = np.uint8 if labels.max(initial=0) < 256 else np.uint16
    _write(path, labels.astype(dtype))


def write_float_tiff(path: str | Path, array: np.ndarray) -> None:
    """Write float maps (probabilities, entropy) as a float32 TIFF, channel-first if 3D."""
    path = Path(path)
    if path.suffix.lower() not in (".tif", ".tiff"):
        raise ValueError(f"{path}: float maps are written as TIFF")
    _write(path, np.asarray(array, dtype=np.float32))


def write_image(path: str | Path, image: np.ndarray) -> None:
    """Write an 8/16-bit ``(H, W)`` or ``(H, W, 3)`` image as PNG or TIFF, by suffix."""
    _write(path, np.asarray(image))


def _write(path: str | Path, array: np.ndarray) -> None:
    path = Path(path)
    with atomic_path(path) as tmp:
        if path.suffix.lower() == ".png":
            from PIL import Image

            Image.fromarray(array).save(tmp, format="PNG")
        elif path.suffix.lower() in (".tif", ".tiff"):
            import tifffile

            tifffile.imwrite(tmp, array, compression="zlib")
        else:
            raise ValueError(f"{path}: unsupported output format (use .png or .tif)")
