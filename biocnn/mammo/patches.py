"""Training patches from whole views: findings (inside the lesion circles) vs normal tissue.

A real screening set has a few dozen cancers, too few for a whole-image classifier to learn
what a finding looks like; the radiologists' lesion circles say where to look. Positives are
patches centred on a pixel inside a circle; negatives are centred in the breast (or just
beyond its edge, so the model also learns the skin line and background) at least
``negative_margin`` patch sides away from every circle, on every view: the other breast of a
woman with a finding and the views of women without one. Each epoch draws new centres, shifts,
scales, rotations by quarter turns, mirrorings and contrast changes (NumPy's global generator,
reseeded every epoch by the training loop, so a run is repeatable).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from torch.utils.data import Dataset


def breast_region(image: np.ndarray) -> np.ndarray:
    """The breast in a preprocessed view: its non-zero pixels (preprocessing zeroes the rest)."""
    return ndimage.binary_opening(image > 0, iterations=2)


def candidate_centres(
    image: np.ndarray, lesion: np.ndarray | None, patch_size: int, negative_margin: float, grid: int = 2
) -> tuple[np.ndarray, np.ndarray]:
    """Flat pixel indices (on a ``grid``-pixel lattice) where positive and negative patches may
    be centred: inside the lesion mask, and in the breast grown by a quarter patch but farther
    than ``negative_margin * patch_size`` from the lesion mask."""
    breast = breast_region(image)
    near = ndimage.binary_dilation(breast, iterations=max(1, patch_size // 4))
    lattice = np.zeros(image.shape, dtype=bool)
    lattice[::grid, ::grid] = True
    if lesion is not None and lesion.any():
        far = ndimage.distance_transform_edt(~lesion) > negative_margin * patch_size
        positives = np.flatnonzero(lesion)
    else:
        far = np.ones(image.shape, dtype=bool)
        positives = np.zeros(0, dtype=np.int64)
    negatives = np.flatnonzero(near & far & lattice)
    return positives.astype(np.int64), negatives.astype(np.int64)


def crop_patch(image: np.ndarray, centre: tuple[int, int], side: int) -> np.ndarray:
    """The ``side`` x ``side`` square centred on ``centre`` (zeros beyond the image)."""
    out = np.zeros((side, side), dtype=np.float32)
    y0, x0 = centre[0] - side // 2, centre[1] - side // 2
    ya, yb = max(y0, 0), min(y0 + side, image.shape[0])
    xa, xb = max(x0, 0), min(x0 + side, image.shape[1])
    if ya < yb and xa < xb:
        out[ya - y0 : yb - y0, xa - x0 : xb - x0] = image[ya:yb, xa:xb]
    return out


class PatchDataset(Dataset):
    """``per_epoch`` random patches a pass, ``positive_fraction`` of them findings.

    Args:
        images: preprocessed views (2D float arrays, 0 outside the breast).
        lesions: lesion masks in the same grid (``None`` where a view has none).
        positive: which views' lesions are positives (e.g. every finding, or malignant ones
            only); lesions of the other views are kept out of the negatives but not sampled.
        patch_size: patch side in input pixels.
        per_epoch: patches per pass over the dataset.
        positive_fraction: share of positives (class balance of the patches).
        negative_margin: negatives are centred farther than this many patch sides from a lesion.
        shift: largest random shift of a patch's centre, as a fraction of its side.
        scale: largest random zoom, as a log factor (0.2: from 0.82x to 1.22x).
        gamma: largest contrast change, as a log factor of the gamma exponent.
        negative: which views may give negatives (default all); a view labelled positive
            without a lesion mask should not, since its finding could be anywhere.
    """

    def __init__(
        self,
        images: Sequence[np.ndarray],
        lesions: Sequence[np.ndarray | None],
        positive: Sequence[bool],
        patch_size: int = 64,
        per_epoch: int = 2048,
        positive_fraction: float = 0.5,
        negative_margin: float = 0.5,
        shift: float = 0.125,
        scale: float = 0.2,
        gamma: float = 0.25,
        negative: Sequence[bool] | None = None,
    ):
        negative = [True] * len(images) if negative is None else list(negative)
        if not (len(images) == len(lesions) == len(positive) == len(negative)):
            raise ValueError("images, lesions, positive and negative must have one entry per view")
        self.images = [np.asarray(im, dtype=np.float32) for im in images]
        self.patch_size, self.per_epoch = int(patch_size), int(per_epoch)
        self.shift, self.scale, self.gamma = shift, scale, gamma
        self.positives: list[tuple[int, np.ndarray]] = []
        self.negatives: list[tuple[int, np.ndarray]] = []
        for i, (image, lesion, pos, neg) in enumerate(zip(self.images, lesions, positive, negative)):
            p, n = candidate_centres(image, lesion, self.patch_size, negative_margin)
            if pos and len(p):
                self.positives.append((i, p))
            if neg and len(n):
                self.negatives.append((i, n))
        if not self.positives:
            raise ValueError("no positive patches: no view marked positive has a lesion mask")
        if not self.negatives:
            raise ValueError("no negative patches: no view has breast tissue away from the lesions")
        self.n_positive = int(round(positive_fraction * self.per_epoch))

    def __len__(self) -> int:
        return self.per_epoch

    def _centre(self, pool: list[tuple[int, np.ndarray]]) -> tuple[int, tuple[int, int]]:
        i, flat = pool[np.random.randint(len(pool))]
        y, x = np.unravel_index(int(flat[np.random.randint(len(flat))]), self.images[i].shape)
        return i, (int(y), int(x))

    def draw(self, positive: bool) -> tuple[int, tuple[int, int], torch.Tensor]:
        """One augmented patch ``(1, patch_size, patch_size)`` of the given class, with the view
        it came from and its centre before the random shift."""
        i, centre = self._centre(self.positives if positive else self.negatives)
        p = self.patch_size
        side = max(2, int(round(p * np.exp(np.random.uniform(-self.scale, self.scale)))))
        jitter = int(self.shift * p)
        y, x = centre
        if jitter:
            y += np.random.randint(-jitter, jitter + 1)
            x += np.random.randint(-jitter, jitter + 1)
        t = torch.from_numpy(crop_patch(self.images[i], (y, x), side))[None, None]
        if side != p:
            t = F.interpolate(t, size=(p, p), mode="bilinear", align_corners=False)
        t = torch.rot90(t, int(np.random.randint(4)), (2, 3))
        if np.random.rand() < 0.5:
            t = t.flip(3)
        if self.gamma:
            t = t.clamp_min(0) ** float(np.exp(np.random.uniform(-self.gamma, self.gamma)))
        return i, centre, t[0].contiguous()

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        positive = index < self.n_positive
        return self.draw(positive)[2], torch.tensor(float(positive))
