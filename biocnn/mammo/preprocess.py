"""From a decoded mammogram to the model's input: canonical orientation, breast crop, resize.

* Right breasts are flipped left-right so every image has the chest wall on the left and the
  nipple pointing right (the orientation of a left breast as stored by most vendors).
* The breast is the bright region that reaches furthest towards the chest wall (see
  :func:`breast_mask`): background, labels, tape marks and scanner strips outside it are
  zeroed and the image is cropped to its bounding box. The pectoral muscle lies inside the
  breast region and is kept; :func:`pectoral_mask` estimates it for whoever needs it.
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


def breast_mask(image: np.ndarray, strip: float = 0.08, regrow: float = 0.006) -> np.ndarray:
    """Boolean mask of the breast in an image with the chest wall on the left, holes filled.

    ``image`` is 2D in ``[0, 1]``. Steps, each against one thing film scans carry besides the
    breast:

    1. Foreground: above the point halfway between the background level and Otsu's
       threshold, so fatty (dark) breast tissue stays inside.
    2. Thin horizontal bands (scanner borders, film-holder edges along the top or bottom,
       thinner than ``strip`` of the long side) are removed by an opening with a vertical line;
       they would otherwise join labels to the breast and stretch the crop.
    3. Of the remaining components at least a fifth the size of the largest, the one reaching
       furthest towards the chest wall (left) is the breast: labels and tape marks lie on the
       nipple side, and a large strip there is not mistaken for the breast.
    4. The skin line and thin parts lost in step 2 are given back within ``regrow`` of the long
       side of that component (not further, so a band touching the breast stays out).
    """
    from skimage.filters import threshold_otsu

    low = float(np.percentile(image, 1))
    try:
        otsu = float(threshold_otsu(image))
    except ValueError:
        otsu = low
    if otsu - low < 0.02:  # flat image: nothing stands out from the background
        return np.zeros(image.shape, dtype=bool)
    fg = ndimage.binary_opening(image > 0.5 * (low + otsu), iterations=1)
    side = max(image.shape)
    length = max(3, round(strip * side))
    core = ndimage.binary_opening(fg, structure=np.ones((length, 1), dtype=bool))
    labels, n = ndimage.label(core)
    if n == 0:
        return np.zeros(image.shape, dtype=bool)
    index = np.arange(1, n + 1)
    sizes = ndimage.sum_labels(core, labels, index)
    columns = np.broadcast_to(np.arange(image.shape[1]), image.shape)
    leftmost = np.asarray(ndimage.minimum(columns, labels, index), dtype=float)
    leftmost[sizes < 0.2 * sizes.max()] = np.inf
    breast = labels == index[int(np.argmin(leftmost))]
    breast = fg & ndimage.binary_dilation(breast, iterations=max(1, round(regrow * side)))
    return ndimage.binary_fill_holes(breast)


def pectoral_mask(image: np.ndarray, breast: np.ndarray) -> np.ndarray:
    """Estimated pectoral muscle of an MLO view (chest wall on the left), as a boolean mask.

    The muscle is the bright triangle in the breast's upper chest-wall corner. Within the
    upper-left part of ``breast``, the smoothed image is split at Otsu's threshold; the bright
    region holding that corner gives, row by row, its edge towards the nipple, and a straight
    line fitted to that edge (RANSAC, so dense tissue touching the muscle does not bend it)
    bounds the muscle. Returns an empty mask when no such line is found (a CC view, a muscle
    no brighter than the tissue next to it), when the area is implausible (under 1 % or over
    half the breast) or when the edge meets the chest wall below three quarters of the breast's
    height. Not used for the crop; a model may use it, e.g. to ignore the muscle.

    Args:
        image: ``(rows, cols)`` in ``[0, 1]``, oriented as :func:`preprocess` orients it.
        breast: boolean mask of the same shape (:func:`breast_mask`).
    """
    from skimage.filters import gaussian, threshold_otsu
    from skimage.measure import LineModelND, ransac

    empty = np.zeros(image.shape, dtype=bool)
    if image.shape != breast.shape or not breast.any():
        return empty
    step = max(1, int(np.ceil(max(image.shape) / MASK_MAX_SIDE)))
    small, inside = _downscale(image, step), breast[::step, ::step][: image.shape[0] // step, : image.shape[1] // step]
    ys, xs = np.nonzero(inside)
    top, left = ys.min(), xs.min()
    height, width = ys.max() - top + 1, xs.max() - left + 1
    region = np.zeros_like(inside)
    region[top : top + int(0.6 * height), left : left + int(0.6 * width)] = True
    region &= inside
    smooth = gaussian(small, sigma=2)
    if region.sum() < 100:
        return empty
    bright = region & (smooth > threshold_otsu(smooth[region]))
    labels, _ = ndimage.label(bright)
    corner = labels[top : top + max(1, height // 20), left : left + max(1, width // 20)]
    corner = corner[corner > 0]
    if corner.size == 0:
        return empty
    muscle = labels == np.bincount(corner).argmax()
    rows = np.nonzero(muscle.any(axis=1))[0]
    edge = np.array([np.nonzero(muscle[y])[0].max() for y in rows], dtype=float)
    if rows.size < 5:
        return empty
    model, _ = ransac(np.c_[rows, edge], LineModelND, min_samples=2, residual_threshold=3, max_trials=200, rng=0)
    if model is None:
        return empty
    (y0, x0), (dy, dx) = model.origin, model.direction
    if abs(dy) < 1e-6 or dx / dy >= 0:  # the muscle's edge runs from the top towards the chest wall
        return empty
    slope = dx / dy
    # Where the edge meets the chest wall and the top of the breast: a muscle ends in the upper
    # part of the view and starts within the breast's width (else it is dense tissue or a border).
    meets_wall = y0 + (left - x0) / slope
    at_top = x0 + (top - y0) * slope
    if meets_wall > top + 0.75 * height or at_top > left + 0.8 * width:
        return empty
    grid_y, grid_x = np.mgrid[: image.shape[0], : image.shape[1]]
    muscle = breast & (grid_x < (x0 + (grid_y / step - y0) * slope) * step)
    fraction = muscle.sum() / breast.sum()
    return muscle if 0.01 < fraction < 0.5 else empty


def _downscale(image: np.ndarray, step: int) -> np.ndarray:
    """``image`` reduced ``step`` times by block means (a cut-off partial block at the edge)."""
    if step == 1:
        return image
    from skimage.transform import downscale_local_mean

    rows, cols = image.shape[0] // step, image.shape[1] // step
    return downscale_local_mean(image[: rows * step, : cols * step], (step, step))


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
    # Block means, not every step-th pixel: film grain and scanner noise average out.
    mask_small = breast_mask(_downscale(image, step))
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
    mask = np.zeros((rows, cols), dtype=bool)
    full = np.repeat(np.repeat(mask_small, step, axis=0), step, axis=1)[:rows, :cols]
    mask[: full.shape[0], : full.shape[1]] = full  # a partial block at the edge stays out
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
