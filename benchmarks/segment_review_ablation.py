"""Which parts of the image-level review score earn their place: an ablation, measured once.

For one trained model, every per-image component the review score has used is measured once on
the reference (training) images, the test images and a shifted set: structure uncertainty
(margin 2 and 0, per class and pooled, with and without the fitted temperature), expected Dice
error, mean entropy, mean mutual information, the encoder-feature distance and the noise level;
and, for the test and shifted images, their true Dice. Policies are then scored offline, so a
policy costs nothing to add: the pre-ablation policy, the kept (default) policy, the kept
policy minus each of its parts, and the simplest baselines. Columns:

* ``error_auroc``: AUROC of the score for finding the test images whose 1 - Dice lies above the
  median 1 - Dice of the test images (image level; ``segment evaluate``'s ``error_auroc``, which
  ``benchmarks/segment_real.py`` reports, is voxel entropy vs wrong voxels: it depends only on
  the temperature, and is printed apart for with/without);
* ``spearman``: Spearman correlation of the score with 1 - Dice on the test images;
* ``ood_auroc``: AUROC of the score for telling shifted images from test images;
* ``id_flagged`` / ``shifted_flagged``: share of test / shifted images flagged.

Nothing is fitted on the test or shifted images: densities, reference distances and review
thresholds come from the reference images (a seeded draw of the training list).

    python benchmarks/segment_review_ablation.py --kind nuclei --model DIR \\
        --train data/real/nuclei.json --test data/real/nuclei.json --shifted DIR --out FILE.json
    python benchmarks/segment_review_ablation.py --kind malaria --work DIR --out FILE.json
    python benchmarks/segment_review_ablation.py --kind tumor --work DIR --out FILE.json

``--kind malaria|tumor`` generates a small training set, test set and shifted sets (noise, blur,
intensity; the held-out cases shifted, as in ``benchmarks/segment_uncertainty.py``) and trains a
model with the shipped config (``--epochs`` to shorten it) unless ``--model`` is given.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from scipy.special import log_ndtr, ndtri_exp
from scipy.stats import norm

from biocnn.io.atomic import write_json
from biocnn.metrics import roc_auc
from biocnn.segment.evaluate import finite_or_none, spearman
from biocnn.segment.ood import FeatureDensity
from biocnn.segment.uncertainty import EPS, expected_dice_error, maps_from_stats, structure_uncertainty

REPO = Path(__file__).resolve().parents[1]
SHIFTS = ("noise", "blur", "intensity")
Q_REVIEW, Q_OOD = 0.9, 0.99


def noise_levels(image: torch.Tensor | np.ndarray) -> np.ndarray:
    """``(C,)``: per channel of a preprocessed image ``(C, *spatial)``, the log of its noise
    standard deviation, estimated robustly from the finest wavelet detail coefficients
    (median absolute deviation / 0.6745, Donoho & Johnstone 1994; scikit-image's
    ``estimate_sigma``).

    Noisier, blurred (less fine detail) or differently contrasted inputs move it; the anatomy
    barely does, since the finest details of smooth structures are near zero (images whose
    edges reach the finest scale, such as cell fields, are left to the encoder features).
    """
    from skimage.restoration import estimate_sigma

    x = image.detach().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
    return np.log(np.array([estimate_sigma(channel.astype(np.float64)) for channel in x]) + 1e-8)


def pooled_structure_uncertainty(prob: np.ndarray, label: np.ndarray, margin: int = 2) -> float:
    """The structure uncertainty pooled over the foreground classes (the per-class mean's
    predecessor): all classes' doubt over all their dilated regions, per structure voxel."""
    from scipy import ndimage

    total, count = 0.0, 0
    for c in range(1, prob.shape[0]):
        hit = label == c
        if not hit.any():
            continue
        region = ndimage.binary_dilation(hit, iterations=margin) if margin > 0 else hit
        p = np.clip(prob[c][region].astype(np.float64), EPS, 1 - EPS)
        total += float(-(p * np.log(p) + (1 - p) * np.log1p(-p)).sum())
        count += int(hit.sum())
    return total / (count + 1.0)


def mean_dice(label: np.ndarray, truth: np.ndarray, classes: int) -> float:
    """Mean foreground Dice of a label map (class indices) against the truth (1 where both empty)."""
    out = []
    for c in range(1, classes):
        a, b = label == c, truth == c
        denom = a.sum() + b.sum()
        out.append(1.0 if denom == 0 else 2.0 * (a & b).sum() / denom)
    return float(np.mean(out))


class Measurer:
    """Every per-image component of one model, measured once per image."""

    def __init__(self, model_dir: Path, max_voxels: int = 20_000):
        from biocnn.checkpoint import load_model
        from biocnn.segment.config import DataConfig, InferenceConfig
        from biocnn.segment.data import preprocessing
        from biocnn.segment.inference import UncertaintyPredictor

        self.model, config = load_model(model_dir, torch.device("cpu"), expect="unet")
        self.data = DataConfig(**config["data"])
        self.inference = InferenceConfig(**config["inference"])
        self.temperature = self.inference.temperature or 1.0
        inf, dims = self.inference, self.data.spatial_dims
        # Features come from the sampling passes, as in predict (unflipped view) and at training
        # (every flip, from the TTA passes).
        self.tta = UncertaintyPredictor([self.model], dims, 1, tta=True, temperatures=[self.temperature], features=True)
        self.predictors = {
            "T": UncertaintyPredictor(
                [self.model], dims, inf.mc_samples, inf.mc_batch, temperatures=[self.temperature]
            ),
            "1": UncertaintyPredictor([self.model], dims, inf.mc_samples, inf.mc_batch, temperatures=[1.0]),
        }
        self.pre = preprocessing(self.data, train=False, with_label=True)
        self.pre_nolabel = preprocessing(self.data, train=False, with_label=False)
        self.classes = len(self.data.label_values)
        self.max_voxels = max_voxels

    def measure(self, case, reference: bool = False) -> dict:
        """The components of one case; ``reference``: all flipped views' features (as training
        fits them), else the unflipped view only (as ``predict`` without ``--tta``)."""
        from biocnn.segment.data import load_case
        from biocnn.segment.inference import case_seed, sliding_stats

        inf = self.inference
        labelled = case.label is not None and not reference
        item = load_case(self.pre if labelled else self.pre_nolabel, case)
        image = item["image"].as_tensor().float()
        row: dict = {"case": case.id}
        for name, predictor in self.predictors.items():
            with case_seed(case.id, image.device):
                stats = sliding_stats(image, predictor, inf.roi_size, inf.sw_batch_size, inf.overlap)
            maps = {k: v[0].numpy() for k, v in maps_from_stats(stats[None].float()).items()}
            prob, label = maps["prob"], maps["label"]
            row[f"su2_{name}"] = structure_uncertainty(prob, label, 2)
            row[f"ede_{name}"] = expected_dice_error(prob, label)
            row[f"ent_{name}"] = float(maps["entropy"].mean())
            if name == "T":
                row["su0_T"] = structure_uncertainty(prob, label, 0)
                row["su2pooled_T"] = pooled_structure_uncertainty(prob, label, 2)
                row["mi_T"] = float(maps["mutual_info"].mean())
            if labelled:
                truth = np.asarray(item["label"].as_tensor())[0].astype(int)
                if name == "T":
                    row["dice"] = mean_dice(label, truth, self.classes)
                # Voxel entropy vs wrong voxels (segment evaluate's error AUROC), a seeded sample.
                rng = np.random.default_rng(0)
                ent = maps["entropy"].reshape(-1)
                wrong = (label != truth).reshape(-1)
                keep = rng.choice(len(ent), min(len(ent), self.max_voxels), replace=False)
                row[f"voxels_{name}"] = (ent[keep].astype(np.float32), wrong[keep])
        if reference:
            with case_seed(case.id, image.device):
                sliding_stats(image, self.tta, inf.roi_size, inf.sw_batch_size, inf.overlap)
            self.predictors["T"].take_features()
            row["features"] = self.tta.take_features()[0]
        else:
            row["features"] = self.predictors["T"].take_features()[0]
        row["noise"] = noise_levels(image)
        return row


def sidak(zscores) -> float:
    """The pre-ablation join of several OOD z-scores: the largest, Sidak-corrected."""
    k = len(zscores)
    if k == 1:
        return float(zscores[0])
    log_tail = float(log_ndtr(-max(zscores)))
    if log_tail > -30:
        log_tail = float(np.log(-np.expm1(k * np.log1p(-np.exp(log_tail)))))
    else:
        log_tail += float(np.log(k))
    return float(-ndtri_exp(log_tail))


def zscores(reference: np.ndarray, distances: np.ndarray, widen: bool = False) -> np.ndarray:
    """Robust log-normal z of ``distances`` against the ``reference`` distances (median, 1.4826
    MAD of the logs); ``widen``: the pre-ablation widening of the spread until at most one
    reference distance lies beyond the ``Q_OOD`` cut."""
    logs = np.sort(np.log(np.maximum(reference, 1e-12)))
    med = float(np.median(logs))
    spread = max(1.4826 * float(np.median(np.abs(logs - med))), 1e-6)
    if widen and len(logs) >= 2:
        spread = max(spread, (float(logs[-2]) - med) / float(norm.ppf(Q_OOD)))
    return (np.log(np.maximum(distances, 1e-12)) - med) / spread


def crossfit_reference(density: FeatureDensity, features: np.ndarray, folds: int = 10) -> np.ndarray:
    """The pre-ablation reference: each image's distance to a density fitted without it (K folds)."""
    n = len(features)
    out = np.empty(n)
    for held in np.array_split(np.arange(n), min(folds, n)):
        rest = np.setdiff1d(np.arange(n), held)
        out[held] = FeatureDensity.fit(features[rest]).distance(features[held, 0])
    return out


def conformal(values, q: float) -> float:
    values = np.sort(np.asarray(values, dtype=np.float64))
    return float(values[min(len(values), int(np.ceil((len(values) + 1) * q))) - 1])


def ood_signals(ref: list[dict], rows: list[dict]) -> dict[str, np.ndarray]:
    """Per image of ``rows``: OOD z-scores of every variant, fitted on ``ref`` only."""
    feats = np.stack([r["features"] for r in ref])
    density = FeatureDensity.fit(feats)
    insample = density.distance(feats[:, 0])
    crossfit = crossfit_reference(density, feats)
    noise_ref = np.stack([r["noise"] for r in ref])
    noise = FeatureDensity.fit(noise_ref[:, None])
    dist = np.array([float(density.distance(r["features"]).mean()) for r in rows])
    ndist = np.array([float(noise.distance(r["noise"])) for r in rows])
    feat_z = zscores(crossfit, dist, widen=True)
    noise_z = zscores(crossfit_reference(noise, noise_ref[:, None]), ndist, widen=True)
    return {
        "distance": dist,
        "feat_z": feat_z,
        "feat_z_insample": zscores(insample, dist, widen=True),
        "feat_z_unwidened": zscores(crossfit, dist),
        "feat_z_insample_unwidened": zscores(insample, dist),
        "noise_z": noise_z,
    }


def policy_scores(u: np.ndarray, thr: float | None, z: np.ndarray | None, floor: str = "tie") -> tuple:
    """Score and flag of every image: ``u`` the doubt, ``thr`` its threshold, ``z`` the OOD z
    (``None``: no OOD check); ``floor``: how an unfamiliar input's score is lifted."""
    ood = np.zeros(len(u), bool) if z is None else z > norm.ppf(Q_OOD)
    flag = ood.copy()
    score = u.astype(float).copy()
    if thr is not None:
        flag |= u >= thr
        if floor == "tie":
            score = np.where(ood, np.maximum(u, thr + 0.01 * u), u)
        elif floor == "flat":
            score = np.where(ood, np.maximum(u, thr), u)
    return score, flag


def evaluate_policies(ref: list[dict], test: list[dict], shifted: list[dict]) -> dict[str, dict]:
    rows = test + shifted
    n = len(test)
    sig = ood_signals(ref, rows)
    err = np.array([1 - r["dice"] for r in test])
    worse = err > np.median(err)
    is_shifted = np.r_[np.zeros(n), np.ones(len(shifted))]

    def col(key, where=rows):
        return np.array([r[key] for r in where])

    def run(u_key: str, z, floor: str = "tie", thr_from_ref: bool = True) -> dict:
        u = col(u_key)
        thr = conformal(col(u_key, ref), Q_REVIEW) if thr_from_ref else None
        score, flag = policy_scores(u, thr, z, floor)
        return {
            "error_auroc": roc_auc(worse, score[:n]),
            "spearman": spearman(score[:n], err),
            "ood_auroc": roc_auc(is_shifted, score),
            "id_flagged": float(flag[:n].mean()),
            "shifted_flagged": float(flag[n:].mean()),
        }

    z = sig["feat_z"]  # the kept OOD check: features, cross-fitted reference, widened spread

    def with_noise(feature_z):
        return np.array([sidak([a, b]) for a, b in zip(feature_z, sig["noise_z"])])

    policies = {
        "pre-ablation: + noise check (Sidak join)": run("su2_T", with_noise(z)),
        "kept (default)": run("su2_T", z),
        "- temperature": run("su2_1", z),
        "- margin (0)": run("su0_T", z),
        "- per class (pooled)": run("su2pooled_T", z),
        "- cross-fitting (in-sample reference)": run("su2_T", sig["feat_z_insample"]),
        "- widening": run("su2_T", sig["feat_z_unwidened"]),
        "- cross-fitting - widening": run("su2_T", sig["feat_z_insample_unwidened"]),
        "- floor tie-break (flat floor)": run("su2_T", z, floor="flat"),
        "- OOD lift (flag only)": run("su2_T", z, floor="none"),
        "- feature check, + noise check": run("su2_T", sig["noise_z"]),
        "+ noise check (larger z, no Sidak)": run("su2_T", np.maximum(z, sig["noise_z"])),
        "expected Dice error instead of structure unc.": run("ede_T", z),
        "baseline: structure unc. alone": run("su2_T", None),
        "baseline: expected Dice error alone": run("ede_T", None),
        "baseline: mean entropy alone": run("ent_T", None),
        "baseline: mean MI alone": run("mi_T", None),
    }
    # A z-score alone (the feature distance's, the noise level's): flagged beyond the OOD cut.
    cut = norm.ppf(Q_OOD)
    for name, zs in (("feature", sig["feat_z"]), ("noise", sig["noise_z"])):
        policies[f"baseline: {name} z alone"] = {
            "error_auroc": roc_auc(worse, zs[:n]),
            "spearman": spearman(zs[:n], err),
            "ood_auroc": roc_auc(is_shifted, zs),
            "id_flagged": float((zs[:n] > cut).mean()),
            "shifted_flagged": float((zs[n:] > cut).mean()),
        }
    return policies


def voxel_error_auroc(test: list[dict]) -> dict[str, float]:
    """``segment evaluate``'s error AUROC (voxel entropy vs wrong voxels), with and without T."""
    out = {}
    for name in ("T", "1"):
        ent = np.concatenate([r[f"voxels_{name}"][0] for r in test])
        wrong = np.concatenate([r[f"voxels_{name}"][1] for r in test])
        out[name] = roc_auc(wrong, ent)
    return out


def threshold_noise(ref: list[dict], sizes=(12, 24, 48), draws: int = 200) -> dict[str, dict]:
    """How much the review threshold moves with the number of reference images (seeded draws)."""
    values = np.array([r["su2_T"] for r in ref])
    rng = np.random.default_rng(0)
    out = {"all": {"images": len(values), "threshold": conformal(values, Q_REVIEW)}}
    for k in sizes:
        if k >= len(values):
            continue
        t = [conformal(rng.choice(values, k, replace=False), Q_REVIEW) for _ in range(draws)]
        out[str(k)] = {
            "images": k,
            "median": float(np.median(t)),
            "p10": float(np.percentile(t, 10)),
            "p90": float(np.percentile(t, 90)),
        }
    return out


def _measure_all(measurer: Measurer, cases, reference: bool, what: str) -> tuple[list[dict], float]:
    rows, start, cpu = [], time.perf_counter(), time.process_time()
    for i, case in enumerate(cases):
        rows.append(measurer.measure(case, reference))
        if (i + 1) % 10 == 0:
            print(f"{what}: {i + 1}/{len(cases)} ({time.perf_counter() - start:.0f} s)", flush=True)
    return rows, time.process_time() - cpu


def _generated(kind: str, work: Path, epochs: int | None, n_train: int, n_test: int) -> tuple[Path, Path, dict]:
    """Generate (once) the training, test and shifted sets and train a model; returns the model,
    the training folder and the test/shifted folders."""
    from biocnn.segment.train import train

    def synth(out: Path, n: int, seed: int, shift: str = "none") -> None:
        if out.is_dir():
            return
        if kind == "malaria":
            from biocnn.synthetic.malaria import write_malaria

            write_malaria(out, n, seed, size=128, shift=shift)
        else:
            from biocnn.synthetic.tumor import write_tumor

            write_tumor(out, n, seed, shape=(48, 48, 48), shift=shift)

    synth(work / "train", n_train, 11)
    sets = {"test": work / "test"}
    synth(sets["test"], n_test, 12)
    for shift in SHIFTS:
        sets[shift] = work / f"test_{shift}"
        synth(sets[shift], n_test, 12, shift)
    model = work / "model"
    if not (model / "config.json").is_file():
        overrides = {"data.train": str(work / "train"), "inference.review_images": 0}
        if epochs:
            overrides["train.epochs"] = epochs
        train(REPO / "configs" / f"segment_{kind}.yaml", model, overrides=overrides)
    return model, work / "train", sets


def main() -> None:
    from biocnn.segment.data import find_cases

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kind", required=True, choices=["nuclei", "malaria", "tumor"])
    parser.add_argument("--model", help="a trained model directory (nuclei: required)")
    parser.add_argument("--train", help="training images (folder or datalist: its training list)")
    parser.add_argument("--test", help="test images with labels (folder or datalist: its test list)")
    parser.add_argument("--shifted", help="shifted images with labels (folder)")
    parser.add_argument("--work", help="malaria/tumor: where data and model are generated (reused)")
    parser.add_argument("--reference-images", type=int, default=48, help="seeded draw of training images")
    parser.add_argument("--epochs", type=int, help="malaria/tumor: override train.epochs")
    parser.add_argument("--n-train", type=int, default=24)
    parser.add_argument("--n-test", type=int, default=24)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", required=True, help="JSON; the measurements are kept beside it (.measurements.pkl)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.kind == "nuclei":
        if not (args.model and args.train and args.test and args.shifted):
            parser.error("--kind nuclei needs --model, --train, --test and --shifted")
        model = Path(args.model)
        sets = {"test": args.test, "shifted": args.shifted}
        train_src = args.train
    else:
        work = Path(args.work or f"/tmp/review_ablation_{args.kind}")
        model, train_src, sets = _generated(args.kind, work, args.epochs, args.n_train, args.n_test)
        model = Path(args.model) if args.model else model
    measurer = Measurer(model)
    dims, mods = measurer.data.spatial_dims, measurer.data.modalities
    train_cases = find_cases(train_src, dims, mods, datalist_key="training")
    pick = np.random.default_rng(0).choice(
        len(train_cases), min(args.reference_images, len(train_cases)), replace=False
    )
    ref_cases = [train_cases[i] for i in sorted(pick)]
    result: dict = {"kind": args.kind, "model": str(model), "temperature": measurer.temperature, "seconds": {}}
    cache = Path(args.out).with_suffix(".measurements.pkl")  # our own file: re-scoring costs nothing
    if cache.is_file():
        import pickle

        ref, measured, result["seconds"] = pickle.loads(cache.read_bytes())
    else:
        import pickle

        ref, result["seconds"]["reference_cpu"] = _measure_all(measurer, ref_cases, True, "reference")
        measured = {}
        for name, src in sets.items():
            cases = find_cases(src, dims, mods, require_labels=True, datalist_key="test")
            measured[name], result["seconds"][f"{name}_cpu"] = _measure_all(measurer, cases, False, name)
        cache.write_bytes(pickle.dumps((ref, measured, result["seconds"])))
    test = measured.pop("test")
    result["images"] = {"reference": len(ref), "test": len(test), **{k: len(v) for k, v in measured.items()}}
    result["test_dice"] = float(np.mean([r["dice"] for r in test]))
    result["voxel_error_auroc"] = voxel_error_auroc(test)
    result["threshold_by_reference_images"] = threshold_noise(ref)
    shifted_all = [r for rows in measured.values() for r in rows]
    result["policies"] = evaluate_policies(ref, test, shifted_all)
    if len(measured) > 1:  # per shift: OOD AUROC of the full policy and of its parts
        result["by_shift"] = {k: evaluate_policies(ref, test, v) for k, v in measured.items()}
    result = finite_or_none(result)
    write_json(args.out, result)
    print(
        f"\n{args.kind}: test Dice {result['test_dice']:.3f}, T = {measurer.temperature:.3f}, images {result['images']}"
    )
    voxel = result["voxel_error_auroc"]
    print(f"voxel error AUROC (segment evaluate's): with T {voxel['T']}, without {voxel['1']}")
    print("review threshold by reference images:", json.dumps(result["threshold_by_reference_images"]))
    print("\n| policy | error AUROC | Spearman | OOD AUROC | ID flagged | shifted flagged |")
    print("|---|---|---|---|---|---|")
    for name, m in result["policies"].items():
        cells = [m[k] for k in ("error_auroc", "spearman", "ood_auroc", "id_flagged", "shifted_flagged")]
        print(f"| {name} | " + " | ".join("n/a" if c is None else f"{c:.3f}" for c in cells) + " |")


if __name__ == "__main__":
    main()
