"""Uncertainty quality of MC spatial dropout, test-time augmentation and a deep ensemble.

For each kind (malaria 2D, tumor 3D) this generates a training set, an in-distribution
held-out set and out-of-distribution held-out sets: the same held-out cases (same seed) with
stronger noise, blur or a non-linear intensity shift. The sets are paired, as in corruption
benchmarks, so a difference between them (the Dice by set) is the shift's doing, not that of
another draw of cases. It trains ``--ensemble`` U-Nets (seeds 0..K-1) with the demo configs, and
predicts the held-out sets three ways:

* ``mc_dropout``: model 0, T Monte Carlo spatial-dropout samples;
* ``tta``: model 0, dropout off, all flips averaged;
* ``ensemble``: the K models, dropout off.

Metrics on all held-out cases (in-distribution + OOD): Dice, HD95, error-detection AUROC
(voxel entropy vs wrong voxels), Spearman (image score vs 1 - Dice), ECE; and the AUROC of
the image-level score for telling OOD from in-distribution images. The image score is the
review ``score`` of ``uncertainty.csv``; a second table gives Spearman and OOD AUROC of each
of its components (and of the mean entropy) measured on the same predictions.
Nothing is fitted on the held-out or OOD sets: the feature statistics and the review
threshold come from the training images (and their validation split): at training time, and
for the ensemble at prediction time (``predict --reference``: its own sampling).

    python benchmarks/segment_uncertainty.py --out segment_uncertainty.json [--quick]
        [--keep DIR] [--heldout-seed S]

With ``--keep DIR`` the data, models and predictions stay in ``DIR``, and a later run reuses
them: ``--heldout-seed 13`` then predicts an independent draw of held-out cases with the same
models.
"""

from __future__ import annotations

import argparse
import csv
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from biocnn.io.atomic import write_json
from biocnn.metrics import roc_auc
from biocnn.segment.data import find_cases
from biocnn.segment.evaluate import evaluate, spearman
from biocnn.segment.predict import predict
from biocnn.segment.train import train

REPO = Path(__file__).resolve().parents[1]
SHIFTS = ("noise", "blur", "intensity")
METHODS = ("mc_dropout", "tta", "ensemble")
KEYS = ("dice", "hd95", "error_auroc", "spearman", "ece", "ood_auroc")
# Columns of uncertainty.csv reported on their own (the review score's parts, the mean entropy and MI).
COMPONENTS = ("structure_uncertainty", "expected_dice_error", "feature_distance", "mean_entropy", "mean_mutual_info")


def _synth(kind: str, out: Path, n: int, seed: int, shift: str = "none") -> None:
    if kind == "malaria":
        from biocnn.synthetic.malaria import write_malaria

        write_malaria(out, n, seed, size=128, shift=shift)
    else:
        from biocnn.synthetic.tumor import write_tumor

        write_tumor(out, n, seed, shape=(48, 48, 48), shift=shift)


def _merge_dirs(kind: str, parts: dict[str, Path], out: Path) -> dict[str, bool]:
    """Link every held-out case into one directory (ids prefixed by set); returns id -> is_ood."""
    is_ood = {}
    for name, src in parts.items():
        if kind == "malaria":
            for sub in ("images", "labels"):
                (out / sub).mkdir(parents=True, exist_ok=True)
                for f in (src / sub).iterdir():
                    (out / sub / f"{name}_{f.name}").symlink_to(f.resolve())
            ids = [f"{name}_{p.stem}" for p in (src / "images").iterdir()]
        else:
            ids = []
            for case in (p for p in src.iterdir() if p.is_dir()):
                new = f"{name}_{case.name}"
                (out / new).mkdir(parents=True)
                for f in case.iterdir():
                    (out / new / f.name.replace(case.name, new, 1)).symlink_to(f.resolve())
                ids.append(new)
        is_ood.update({i: name != "id" for i in ids})
    return is_ood


def run_kind(
    kind: str,
    work: Path,
    n_train: int,
    n_test: int,
    ensemble: int,
    samples: int,
    epochs: int | None,
    heldout_seed: int = 12,
) -> dict:
    # Another held-out seed is another draw of cases for the same models (kept beside the first).
    tag = "" if heldout_seed == 12 else f"_seed{heldout_seed}"
    parts = {"id": work / f"test{tag}_id", **{shift: work / f"test{tag}_{shift}" for shift in SHIFTS}}
    heldout = work / f"heldout{tag}"
    if not (work / "train").is_dir():  # a kept directory from an earlier run is reused as it is
        _synth(kind, work / "train", n_train, seed=11)
    if not heldout.is_dir():
        for name, part in parts.items():  # one seed: the OOD sets are the held-out cases, shifted
            _synth(kind, part, n_test, seed=heldout_seed, shift="none" if name == "id" else name)
        _merge_dirs(kind, parts, heldout)
    is_ood = {
        c.id: not c.id.startswith("id_")
        for c in find_cases(heldout, 2 if kind == "malaria" else 3, ("t1", "t1ce", "t2", "flair"))
    }
    models = []
    for seed in range(ensemble):
        out = work / f"model{seed}"
        models.append(out)
        if (out / "feature_stats.safetensors").is_file():
            print(f"{kind}: reusing model {seed} in {out}", flush=True)
            continue
        overrides = {"data.train": str(work / "train"), "train.seed": seed}
        if epochs:
            overrides["train.epochs"] = epochs
        start = time.perf_counter()
        train(REPO / "configs" / f"segment_{kind}.yaml", out, overrides=overrides)
        print(f"{kind}: trained model {seed} in {time.perf_counter() - start:.0f} s", flush=True)
    # The ensemble's review threshold is measured on the training images with its own sampling
    # (its members' stored values are Monte Carlo ones, on another scale); the other two use
    # what model 0 stored at training.
    settings = {
        "mc_dropout": (models[:1], samples, False, None),
        "tta": (models[:1], 1, True, None),
        "ensemble": (models, 1, False, work / "train"),
    }
    result = {}
    for method, (dirs, mc, tta, reference) in settings.items():
        pred = work / f"pred{tag}_{method}"
        start = time.perf_counter()
        predict(dirs, heldout, pred, mc_samples=mc, tta=tta, reference=reference)
        seconds = time.perf_counter() - start
        m = evaluate(pred, heldout)
        with open(pred / "uncertainty.csv", newline="") as fh:
            rows = list(csv.DictReader(fh))
        scores = np.array([float(r["score"]) for r in rows])
        labels = np.array([is_ood[r["case"]] for r in rows])
        result[method] = {k: m[k] for k in KEYS[:-1]}
        result[method]["ood_auroc"] = roc_auc(labels, scores)
        error = {r["case"]: 1 - r["mean_dice"] for r in m["per_case"]}
        result[method]["components"] = {
            col: {
                "spearman": spearman([float(r[col]) for r in rows], [error[r["case"]] for r in rows]),
                "ood_auroc": roc_auc(labels, np.array([float(r[col]) for r in rows])),
            }
            for col in COMPONENTS
            if all(r[col] != "" for r in rows)
        }
        # Diagnostic, uses the labels (nothing is fitted on it): the best Spearman any score
        # could reach while ranking every OOD input above every in-distribution one. Where
        # OOD sets are segmented as well as in-distribution ones, the two goals pull apart.
        err = np.array([error[r["case"]] for r in rows])
        result[method]["spearman_ceiling_at_ood_auroc_1"] = spearman(np.where(labels, 2 + err, err), err)
        flagged = np.array([r["flag"] == "yes" for r in rows])
        result[method]["flagged"] = {
            name: float(np.mean([f for f, r in zip(flagged, rows) if r["case"].startswith(name + "_")]))
            for name in parts
        }
        # Dice split by set, to see what the OOD shift does to the segmentation itself.
        result[method]["dice_by_set"] = {
            name: float(np.mean([r["mean_dice"] for r in m["per_case"] if r["case"].startswith(name + "_")]))
            for name in parts
        }
        result[method]["predict_seconds"] = seconds
        print(kind, method, json.dumps(result[method]), flush=True)
    return result


def _fmt(v) -> str:
    return "n/a" if v is None or (isinstance(v, float) and not np.isfinite(v)) else f"{v:.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="segment_uncertainty.json")
    parser.add_argument("--kinds", nargs="+", default=["malaria", "tumor"], choices=["malaria", "tumor"])
    parser.add_argument("--ensemble", type=int, default=3, help="models in the ensemble")
    parser.add_argument("--samples", type=int, default=20, help="T, Monte Carlo samples")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--heldout-seed",
        type=int,
        default=12,
        help="seed of the held-out cases (another seed: an independent draw for the same models)",
    )
    parser.add_argument("--quick", action="store_true", help="fewer cases and epochs (smoke run)")
    parser.add_argument(
        "--keep",
        help="keep the generated data, models and predictions under this directory "
        "(a later run with the same directory reuses its data and models)",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    # (training, held-out per set) cases: small held-out sets make the uncertainty metrics vary
    # between draws, and the review threshold is a conformal 0.9 quantile of the training
    # images' values, a noisy statistic of a few values; 2D models train in seconds.
    sizes = {"malaria": (48, 48), "tumor": (24, 48)}
    result = {}
    for kind in args.kinds:
        n_train, n_test = sizes[kind]
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(args.keep) / kind if args.keep else Path(tmp)
            result[kind] = run_kind(
                kind,
                work,
                n_train if not args.quick else 6,
                n_test if not args.quick else 3,
                args.ensemble,
                args.samples,
                2 if args.quick else None,
                args.heldout_seed,
            )
    from biocnn.segment.evaluate import finite_or_none

    result = finite_or_none(result)
    write_json(args.out, result)  # atomic, like every biocnn output
    print("\nGoals: error AUROC >= 0.85, Spearman >= 0.6, OOD AUROC >= 0.9\n")
    print(
        "| kind | method | Dice | HD95 | error AUROC | Spearman | ECE | OOD AUROC "
        "| Dice ID / noise / blur / intensity |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for kind, methods in result.items():
        for method in METHODS:
            r = methods[method]
            by_set = " / ".join(_fmt(r["dice_by_set"][s]) for s in ("id", *SHIFTS))
            print(f"| {kind} | {method} | " + " | ".join(_fmt(r[k]) for k in KEYS) + f" | {by_set} |")
    print(
        "\nComponents of the review score (columns of uncertainty.csv), same predictions; "
        "Spearman vs 1 - Dice / OOD AUROC; flagged: share flagged for review, ID / noise / blur / intensity; "
        "ceiling: the best Spearman of any score that ranks every OOD input first (uses the labels)\n"
    )
    print("| kind | method | " + " | ".join(COMPONENTS) + " | flagged | Spearman ceiling at OOD AUROC 1 |")
    print("|---|---|" + "---|" * (len(COMPONENTS) + 2))
    for kind, methods in result.items():
        for method in METHODS:
            comp = methods[method]["components"]
            cells = [
                f"{_fmt(comp[c]['spearman'])} / {_fmt(comp[c]['ood_auroc'])}" if c in comp else "n/a"
                for c in COMPONENTS
            ]
            flagged = " / ".join(_fmt(methods[method]["flagged"][s]) for s in ("id", *SHIFTS))
            ceiling = _fmt(methods[method]["spearman_ceiling_at_ood_auroc_1"])
            print(f"| {kind} | {method} | " + " | ".join(cells) + f" | {flagged} | {ceiling} |")


if __name__ == "__main__":
    main()
