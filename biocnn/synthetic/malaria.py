"""Malaria-like microscopy fields: cells on a background, some infected with parasites.

Each field is an RGB image with a label mask (0 background/cells, 1 parasite). Variation that
real liver-stage / blood-smear images show and a model must cope with: cell size and density,
parasites of varied size, shape (blob, elongated, ring) and number, stain colour, uneven
illumination and noise. ``shift`` produces out-of-distribution fields (stronger noise, blur or
an intensity shift) for the uncertainty benchmark.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy import ndimage

from biocnn.io.images import write_image, write_label

SHIFTS = ("none", "noise", "blur", "intensity")


def _ellipse(yy, xx, cy, cx, ry, rx, angle):
    c, s = np.cos(angle), np.sin(angle)
    dy, dx = yy - cy, xx - cx
    u, v = (dx * c + dy * s) / rx, (-dx * s + dy * c) / ry
    return u * u + v * v


def malaria_field(
    rng: np.random.Generator,
    size: int = 128,
    shift: str = "none",
    severity: float = 1.0,
    cell_scale: float | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """One field: ``(uint8 RGB image (H, W, 3), uint8 label mask (H, W))``.

    ``cell_scale`` multiplies cell and parasite sizes (default ``size / 128``, so a field
    looks the same at any size); with ``cell_scale=1`` a larger field just holds more cells.
    """
    if shift not in SHIFTS:
        raise ValueError(f"shift must be one of {SHIFTS}, got {shift!r}")
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    scale = size / 128.0 if cell_scale is None else float(cell_scale)
    density = (size / 128.0) ** 2 / (scale * scale)
    # Stain: background, cytoplasm and parasite colours jittered per field.
    bg = np.array([0.93, 0.86, 0.88]) + rng.normal(0, 0.03, 3)
    cell = np.array([0.85, 0.62, 0.68]) + rng.normal(0, 0.04, 3)
    para = np.array([0.35, 0.18, 0.52]) + rng.normal(0, 0.04, 3)
    img = np.ones((size, size, 3), np.float32) * bg
    label = np.zeros((size, size), np.uint8)
    n_cells = max(3, int(rng.integers(8, 16) * scale * scale * density))
    for i in range(n_cells):
        cy, cx = rng.uniform(0, size, 2)
        r = rng.uniform(7, 11) * scale
        d = _ellipse(yy, xx, cy, cx, r * rng.uniform(0.85, 1.0), r, rng.uniform(0, np.pi))
        inside = d < 1
        rim = (d > 0.7) & inside
        img[inside] = cell
        img[rim] = cell * 0.9
        if i == 0 or rng.random() < 0.45:  # infected (at least one per field): 1-3 parasites
            for _ in range(int(rng.integers(1, 4))):
                ang, rad = rng.uniform(0, 2 * np.pi), rng.uniform(0, 0.55) * r
                py, px = cy + rad * np.sin(ang), cx + rad * np.cos(ang)
                pr = rng.uniform(1.3, 3.5) * scale
                kind = rng.random()
                pd = _ellipse(
                    yy, xx, py, px, pr, pr * (rng.uniform(1.3, 2.2) if kind < 0.3 else 1.0), rng.uniform(0, np.pi)
                )
                mask = pd < 1
                if kind > 0.8:  # ring form: a dark ring with a paler centre
                    img[mask & (pd > 0.35)] = para
                    img[mask & (pd <= 0.35)] = (para + cell) / 2
                else:
                    img[mask] = para * rng.uniform(0.85, 1.1)
                label[mask & inside] = 1
    # Uneven illumination: a smooth multiplicative gradient across the field.
    gy, gx = rng.normal(0, 0.15, 2)
    illum = 1 + gy * (yy / size - 0.5) + gx * (xx / size - 0.5)
    img *= illum[..., None]
    img = ndimage.gaussian_filter(img, sigma=(0.7, 0.7, 0))
    noise = 0.02
    if shift == "noise":
        noise = 0.02 + 0.08 * severity
    elif shift == "blur":
        img = ndimage.gaussian_filter(img, sigma=(1.2 * severity + 0.5, 1.2 * severity + 0.5, 0))
    elif shift == "intensity":
        img = np.clip(img, 0, 1) ** (1 + 1.2 * severity) * 0.9 + 0.05 * severity
    img = img + rng.normal(0, noise, img.shape)
    return (np.clip(img, 0, 1) * 255).round().astype(np.uint8), label


def write_malaria(
    out: str | Path, n: int, seed: int, size: int = 128, shift: str = "none", severity: float = 1.0, fmt: str = "png"
) -> list[str]:
    """Write ``n`` fields to ``out/images/field_XXX.<fmt>`` and ``out/labels/field_XXX.png``.

    ``fmt="tif"`` writes 16-bit TIFF images instead of 8-bit PNG. Returns the case names.
    """
    out = Path(out)
    rng = np.random.default_rng(seed)
    names = []
    for i in range(n):
        image, label = malaria_field(rng, size, shift, severity)
        name = f"field_{i:03d}"
        if fmt == "tif":
            write_image(out / "images" / f"{name}.tif", image.astype(np.uint16) * 257)
        else:
            write_image(out / "images" / f"{name}.png", image)
        write_label(out / "labels" / f"{name}.png", label)
        names.append(name)
    return names
