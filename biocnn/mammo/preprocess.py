"""From a decoded mammogram to the model's input: canonical orientation, breast crop, resize.

* Right breasts are flipped left-right so every image has the chest wall on the left and the
  nipple pointing right (the orientation of a left breast as stored by most vendors).
* The breast is the largest connected bright component: background, labels and markers
  outside it are zeroed and the image is cropped to its bounding box.
* The crop is resized to the model input keeping the aspect ratio, placed against the chest
  wall (left) and centred vertically, the rest padded with zeros.

:class:`Geometry` records every step so a lesion mask (or any map in the original pixel grid)
can be carried into the model's grid with :meth:`Geometry.apply`, and heatmaps drawn there.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from biocnn.errors import InputError

# Breast masks are computed on a copy at most this many pixels along its long side: a
# full-field image is 3328 x 2560, and labelling it at full size costs far more than needed.
MASK_MAX_SIDE = 512


@dataclass
class Geometry:
    """How an image of ``source_shape`` became the ``size`` model input."""

    source_shape: tuple[int, int]
    flipped: bool
    box: tuple[int, int, int, int]  # y0, y1, x0, x1 in the (flipped) source
    scale: float
    offset: tuple[int, int]  # top, left of the resized crop inside the model input
    size: tuple[int, int]  # model input (height, width)

    def apply(self, image: np.ndarray, mode: str = "area") -> np.ndarray:
        """Carry a 2D array in the source grid (e.g. a lesion mask) into the model's grid."""
        if tuple(image.shape) != tuple(self.source_shape):
            raise ValueError(f"expected shape {self.source_shape}, got {image.shape}")
        x = image[:, ::-1] if self.flipped else image
        y0, y1, x0, x1 = self.box
        return place(np.ascontiguousarray(x[y0:y1, x0:x1], dtype=np.float32), self, mode)


def breast_mask(image: np.ndarray) -> np.ndarray:
    """Boolean mask of the largest bright connected component (the breast), holes filled.

    ``image`` is 2D in ``[0, 1]``. The threshold is halfway between the background level and
    Otsu's threshold, so fatty (dark) breast tissue stays inside the mask.
    """
    from skimage.filters import threshold_otsu

    low = float(np.percentile(image, 1))
    try:
        otsu = float(threshold_otsu(image))
    except ValueError:
        otsu = low
    threshold = 0.5 * (low + otsu)
    if otsu - low < 0.02:  # flat image: nothing stands out from the background
        return np.zeros(image.shape, dtype=bool)
    fg = image > threshold
    fg = ndimage.binary_opening(fg, iterations=1)
    labels, n = ndimage.label(fg)
    if n == 0:
        return np.zeros(image.shape, dtype=bool)
    sizes = ndimage.sum_labels(fg, labels, index=np.arange(1, n + 1))
    mask = labels == (int(np.argmax(sizes)) + 1)
    return ndimage.binary_fill_holes(mask)


def place(crop: np.ndarray, geom: Geometry, mode: str = "area") -> np.ndarray:
    """Resize ``crop`` (2D, or 3D with frames first) by ``geom.scale`` and pad to ``geom.size``."""
    height, width = geom.size
    h, w = crop.shape[-2:]
    new_h = max(1, min(height, round(h * geom.scale)))
    new_w = max(1, min(width, round(w * geom.scale)))
    t = torch.from_numpy(np.ascontiguousarray(crop, dtype=np.float32))
    t = t.reshape(-1, 1, h, w)
    # "area" averages every source pixel (no aliasing of calcifications); bilinear when growing.
    resized = F.interpolate(
        t,
        size=(new_h, new_w),
        mode=mode if new_h <= h else "bilinear",
        **({"align_corners": False} if (mode != "area" or new_h > h) else {}),
    )
    out = torch.zeros((resized.shape[0], height, width), dtype=torch.float32)
    top, left = geom.offset
    out[:, top : top + new_h, left : left + new_w] = resized[:, 0]
    out = out.numpy()
    return out[0] if crop.ndim == 2 else out


def fit_geometry(
    source_shape: tuple[int, int], flipped: bool, box: tuple[int, int, int, int], size: tuple[int, int]
) -> Geometry:
    """The scale and placement that fit ``box`` into ``size`` keeping the aspect ratio."""
    y0, y1, x0, x1 = box
    h, w = y1 - y0, x1 - x0
    scale = min(size[0] / h, size[1] / w)
    new_h = max(1, min(size[0], round(h * scale)))
    top = (size[0] - new_h) // 2  # centred vertically, chest wall at the left edge
    return Geometry(tuple(source_shape), flipped, box, scale, (top, 0), tuple(size))


def find_breast(
    image: np.ndarray, path: str | Path = "<image>", margin: float = 0.01
) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """Full-resolution breast mask and its bounding box (with a small margin)."""
    rows, cols = image.shape
    step = max(1, int(np.ceil(max(rows, cols) / MASK_MAX_SIDE)))
    small = image[::step, ::step]
    mask_small = breast_mask(small)
    if mask_small.sum() < 0.005 * mask_small.size:
        raise InputError(path, "no breast tissue found (blank or uniform image)")
    ys, xs = np.nonzero(mask_small)
    pad_y, pad_x = int(margin * rows), int(margin * cols)
    y0 = max(0, ys.min() * step - pad_y)
    y1 = min(rows, (ys.max() + 1) * step + pad_y)
    x0 = max(0, xs.min() * step - pad_x)
    x1 = min(cols, (xs.max() + 1) * step + pad_x)
    # The mask at full size (nearest neighbour), dilated a little so the skin line survives.
    mask_small = ndimage.binary_dilation(mask_small, iterations=2)
    mask = np.repeat(np.repeat(mask_small, step, axis=0), step, axis=1)[:rows, :cols]
    return mask, (int(y0), int(y1), int(x0), int(x1))


def preprocess(
    pixels: np.ndarray, laterality: str, size: tuple[int, int], depth: int | None = None, path: str | Path = "<image>"
) -> tuple[np.ndarray, Geometry]:
    """Model input from display grey values: flip right breasts, crop the breast, resize.

    Args:
        pixels: ``(rows, cols)`` or ``(frames, rows, cols)`` in ``[0, 1]``.
        laterality: ``"L"`` or ``"R"``.
        size: model input ``(height, width)``.
        depth: slices of the model input for volumes (resampled along the frames).
        path: named in errors.

    Returns:
        ``(image, geometry)``: float32 ``(height, width)`` or ``(depth, height, width)``.
    """
    flipped = laterality.upper() == "R"
    x = pixels[..., ::-1] if flipped else pixels
    # Volumes: the breast outline from the maximum-intensity projection over slices.
    outline = x.max(axis=0) if x.ndim == 3 else x
    mask, box = find_breast(np.ascontiguousarray(outline), path)
    geom = fit_geometry(outline.shape, flipped, box, size)
    y0, y1, x0, x1 = box
    crop = x[..., y0:y1, x0:x1] * mask[y0:y1, x0:x1]
    out = place(crop, geom)
    if out.ndim == 3 and depth is not None and out.shape[0] != depth:
        t = torch.from_numpy(out)[None, None]
        out = F.interpolate(t, size=(depth, *size), mode="trilinear", align_corners=False)[0, 0].numpy()
    return out.astype(np.float32, copy=False), geom
