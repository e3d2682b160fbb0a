"""Write the project's fixed development splits of ``../shared/data/real`` (run from anywhere).

The real datasets' own test parts are never shown to us, so every tuning decision is made on
these splits and nowhere else. They are fixed (seed 0) and committed; rerunning this script
rewrites the same files. ``--seed N --suffix _sN`` writes a second, independent split used to
check that a result is not a property of one draw.

* MIAS: patient-level split (both breasts of a woman on the same side), stratified by whether
  the woman has a malignant finding; manifests with paths relative to this folder.
* Nuclei: image-level split of the 300 images (each image is its own field of view).
* BRATS: 3 training cases, 1 test case (4 cases is all there is); datalists.

Datalists are MONAI / Decathlon-style JSON (``monai.data.load_decathlon_datalist``) with paths
relative to the JSON file's folder.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REAL = HERE.parent.parent.parent / "shared" / "data" / "real"


def rel(path: Path) -> str:
    return os.path.relpath(path, HERE)


def split_mias(rng: np.random.Generator, suffix: str, test_fraction: float = 0.3) -> None:
    src = REAL / "mias" / "manifest.csv"
    with open(src, newline="") as fh:
        rows = list(csv.DictReader(fh))
        fields = list(rows[0].keys())
    patients = sorted({r["patient_id"] for r in rows})
    malignant = {p for p in patients if any(r["label"] == "1" for r in rows if r["patient_id"] == p)}
    test: set[str] = set()
    for group in (sorted(malignant), sorted(set(patients) - malignant)):
        order = rng.permutation(len(group))
        test |= {group[i] for i in order[: round(test_fraction * len(group))]}
    for part, keep in (("train", lambda p: p not in test), ("test", lambda p: p in test)):
        out = HERE / f"mias_{part}{suffix}.csv"
        with open(out, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=fields, lineterminator="\n")
            writer.writeheader()
            for r in rows:
                if keep(r["patient_id"]):
                    r = dict(r)
                    r["path"] = rel(REAL / "mias" / r["path"])
                    if r.get("mask"):
                        r["mask"] = rel(REAL / "mias" / r["mask"])
                    writer.writerow(r)


def write_datalist(path: Path, training: list[dict], test: list[dict]) -> None:
    path.write_text(json.dumps({"training": training, "test": test}, indent=1) + "\n")


def split_nuclei(rng: np.random.Generator, suffix: str, test_fraction: float = 0.2) -> None:
    ids = sorted(p.stem for p in (REAL / "nuclei" / "images").glob("*.png"))
    order = rng.permutation(len(ids))
    n_test = round(test_fraction * len(ids))
    test_ids = sorted(ids[i] for i in order[:n_test])
    train_ids = sorted(ids[i] for i in order[n_test:])

    def entry(i: str) -> dict:
        return {
            "image": rel(REAL / "nuclei" / "images" / f"{i}.png"),
            "label": rel(REAL / "nuclei" / "labels" / f"{i}.png"),
        }

    write_datalist(HERE / f"nuclei{suffix}.json", [entry(i) for i in train_ids], [entry(i) for i in test_ids])


def split_brats(rng: np.random.Generator, suffix: str) -> None:
    cases = sorted(p.name for p in (REAL / "brats").iterdir() if p.is_dir())
    test_case = cases[int(rng.integers(len(cases)))]

    def entry(c: str) -> dict:
        d = REAL / "brats" / c
        return {
            "image": [rel(d / "Flair_subtrMeanDivStd.nii.gz"), rel(d / "T1c_subtrMeanDivStd.nii.gz")],
            "label": rel(d / "OTMultiClass.nii.gz"),
        }

    write_datalist(HERE / f"brats{suffix}.json", [entry(c) for c in cases if c != test_case], [entry(test_case)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--suffix", default="")
    args = parser.parse_args()
    split_mias(np.random.default_rng(args.seed), args.suffix)
    split_nuclei(np.random.default_rng(args.seed + 1000), args.suffix)
    split_brats(np.random.default_rng(args.seed + 2000), args.suffix)


if __name__ == "__main__":
    main()
