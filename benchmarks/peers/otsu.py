"""The classical baseline for nuclei: an Otsu threshold on each grey image (nuclei are the bright side)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from skimage.filters import threshold_otsu

from peers.cases import Dataset, read_case, write_label


def run(test_cases, dataset: Dataset, work: Path) -> tuple[dict[str, Path], dict]:
    """Threshold every test image on its own (nothing is trained); returns the label maps."""
    start = time.perf_counter()
    predictions = {}
    for case in test_cases:
        image, _, _ = read_case(case, dataset)
        grey = image[0]
        path = work / "pred" / f"{case.id}.png"
        write_label(path, (grey > threshold_otsu(grey)).astype(np.uint8))
        predictions[case.id] = path
    return predictions, {"train_seconds": 0.0, "predict_seconds": time.perf_counter() - start}
