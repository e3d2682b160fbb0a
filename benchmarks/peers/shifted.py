"""A development stand-in for nuclei imaged by other kinds of microscopy: the fluorescence images
re-rendered as stained tissue (H&E-like) and as brightfield.

* ``he``: the grey value becomes the haematoxylin density of a Ruifrok-Johnston colour
  deconvolution (scikit-image's ``hed2rgb``), on a smooth random eosin background: dark purple
  nuclei on pink tissue, white where there is no stain.
* ``brightfield``: inverted intensities (dark nuclei on a bright field), a slow illumination
  gradient, a little blur and shot-like noise.

The nucleus masks are kept, so the same labels hold. The real shifted set (brightfield and
stained-tissue images of the same collection) is part of the dataset owners' unseen test.

    python benchmarks/peers/shifted.py --source data/real/nuclei.json --key test --out /tmp/shifted [--seed 0]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image
from scipy.ndimage import gaussian_filter
from skimage.color import hed2rgb

KINDS = ("he", "brightfield")


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    field = gaussian_filter(rng.standard_normal(shape), sigma)
    return (field - field.min()) / (np.ptp(field) + 1e-8)


def he_like(grey: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Stained-tissue rendering of a fluorescence image (values in [0, 1]) as 8-bit RGB."""
    low, high = np.percentile(grey, [1, 99.9])
    nuclei = np.clip((grey - low) / (high - low + 1e-8), 0, 1)
    # Stain densities on the scale rgb2hed gives for real H&E slides (about 0 to 0.15).
    hed = np.zeros((*grey.shape, 3))
    hed[..., 0] = 0.12 * nuclei + 0.01 * _smooth_noise(rng, grey.shape, 2)  # haematoxylin: nuclei
    hed[..., 1] = 0.01 + 0.05 * _smooth_noise(rng, grey.shape, 12)  # eosin: cytoplasm, stroma
    rgb = hed2rgb(hed)
    rgb = rgb + rng.normal(0, 0.015, rgb.shape)
    return np.clip(rgb * 255, 0, 255).astype(np.uint8)


def brightfield_like(grey: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Brightfield rendering (dark nuclei on a bright, unevenly lit field) as 8-bit grey."""
    nuclei = gaussian_filter(grey / (grey.max() + 1e-8), 1.0)
    yy, xx = np.mgrid[0 : grey.shape[0], 0 : grey.shape[1]] / max(grey.shape)
    light = 0.85 + 0.1 * np.sin(2 * xx + rng.uniform(0, 6)) * np.cos(1.5 * yy)
    image = light * (1 - 0.6 * nuclei)
    image = rng.poisson(np.clip(image, 0, 1) * 400) / 400
    return np.clip(image * 255, 0, 255).astype(np.uint8)


def write_shifted(source: str, key: str, out: Path, seed: int = 0) -> int:
    """Every labelled image of ``source`` (folder or datalist ``key`` list), rendered alternately as
    ``he`` and ``brightfield``, into ``out/images`` and ``out/labels``; returns how many."""
    from biocnn.io.images import read_label
    from biocnn.segment.data import find_cases, read_case_2d

    rng = np.random.default_rng(seed)
    cases = find_cases(source, 2, require_labels=True, datalist_key=key)
    for sub in ("images", "labels"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    for i, case in enumerate(cases):
        grey = read_case_2d(case, 1)[0][0]
        kind = KINDS[i % len(KINDS)]
        image = he_like(grey, rng) if kind == "he" else brightfield_like(grey, rng)
        Image.fromarray(image).save(out / "images" / f"{kind}_{case.id}.png")
        Image.fromarray(read_label(case.label).astype(np.uint8)).save(out / "labels" / f"{kind}_{case.id}.png")
    return len(cases)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", required=True, help="nuclei folder or datalist JSON")
    parser.add_argument("--key", default="test", help="datalist list to render (default: test)")
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    n = write_shifted(args.source, args.key, args.out, args.seed)
    print(f"wrote {n} shifted images to {args.out}")


if __name__ == "__main__":
    sys.exit(main())
