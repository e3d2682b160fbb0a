"""A contact sheet of breast crops: every view at thumbnail size, for checking the crop by eye.

Each tile is the stored image, downscaled, with what the model will not see (outside the
breast mask) darkened and tinted red, the crop box in green and the estimated pectoral muscle
edge in cyan. A wrong crop shows as breast tissue tinted red, a label or strip left untinted,
or a box that cuts the breast or is stretched by something that is not breast.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from biocnn.errors import InputError
from biocnn.io.atomic import atomic_path
from biocnn.io.dicom import read_mammogram
from biocnn.mammo.preprocess import find_breast, pectoral_mask

CAPTION = 12  # pixels of text under each tile


def crop_tile(path: str | Path, size: int = 128) -> Any:
    """One ``size`` x ``size`` RGB tile (a PIL image) of the file at ``path``; see the module docstring."""
    from PIL import Image, ImageDraw

    mammo = read_mammogram(path, allow_volume=False)
    flipped = mammo.laterality == "R"
    oriented = np.ascontiguousarray(mammo.pixels[:, ::-1] if flipped else mammo.pixels)
    mask, (y0, y1, x0, x1) = find_breast(oriented, path)
    muscle = pectoral_mask(oriented, mask)
    edge = muscle & ~ndimage.binary_erosion(muscle, iterations=3)
    if flipped:  # back to the stored orientation
        mask, edge = mask[:, ::-1], edge[:, ::-1]
        x0, x1 = mammo.pixels.shape[1] - x1, mammo.pixels.shape[1] - x0
    rows, cols = mammo.pixels.shape

    def small(a: np.ndarray, resample) -> np.ndarray:
        return np.asarray(Image.fromarray(a).resize((size, size), resample))

    grey = small((np.clip(mammo.pixels, 0, 1) * 255).astype(np.uint8), Image.BILINEAR)
    keep = small(mask.astype(np.uint8) * 255, Image.NEAREST) > 127
    line = small(edge.astype(np.uint8) * 255, Image.BILINEAR) > 40
    rgb = np.repeat(grey[..., None], 3, axis=-1).astype(np.float32)
    rgb[~keep] *= 0.45
    rgb[~keep, 0] += 90
    rgb[line] = (0, 255, 255)
    tile = Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8))
    sy, sx = size / rows, size / cols
    ImageDraw.Draw(tile).rectangle([x0 * sx, y0 * sy, x1 * sx - 1, y1 * sy - 1], outline=(0, 255, 0))
    return tile


def crop_contact_sheet(
    paths: Sequence[str | Path], out: str | Path, size: int = 128, columns: int = 14
) -> dict[str, Any]:
    """Write the contact sheet of ``paths`` to the PNG ``out``; returns counts and failures.

    A file that cannot be read or cropped gets a black tile captioned ``FAILED`` and is listed
    with its reason in the returned ``failures``.
    """
    from PIL import Image, ImageDraw

    paths = list(paths)
    if not paths:
        raise ValueError("no files to draw")
    rows = -(-len(paths) // columns)
    sheet = Image.new("RGB", (columns * size, rows * (size + CAPTION)), "black")
    draw = ImageDraw.Draw(sheet)
    failures = []
    for i, path in enumerate(paths):
        r, c = divmod(i, columns)
        caption = Path(path).stem
        try:
            sheet.paste(crop_tile(path, size), (c * size, r * (size + CAPTION)))
        except InputError as exc:
            failures.append({"file": str(path), "reason": exc.problem})
            caption += " FAILED"
        draw.text((c * size + 2, r * (size + CAPTION) + size), caption, fill=(255, 255, 0))
    with atomic_path(out) as tmp:
        sheet.save(tmp, format="PNG")
    return {"images": len(paths), "drawn": len(paths) - len(failures), "failures": failures}
