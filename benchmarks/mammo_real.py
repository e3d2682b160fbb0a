"""Mammography on real mammograms (mini-MIAS): biocnn beside the networks a MONAI user would pick.

    python benchmarks/mammo_real.py --train-manifest data/real/mias_train.csv \\
        --test-manifest data/real/mias_test.csv --out mammo_real.json [--budget-seconds 420]

For two targets, ``malignant`` (the ``label`` column) and ``abnormal`` (the ``abnormal``
column), trains on the train manifest and scores the test manifest:

* **biocnn**: ``biocnn mammo train --config configs/mammo_screening.yaml --label-column COL
  --max-seconds BUDGET`` through the command line (its own patient-level validation split inside
  the train manifest; the budget stops its training loop), then ``biocnn mammo evaluate`` (AUC,
  ECE, pointing game on the findings with lesion circles);
* **densenet121**: MONAI's ``DenseNet121`` (what MONAI's classification tutorials train);
* **resnet18**: MONAI's ``resnet18``;
* **classical**: logistic regression on intensity and texture statistics of the breast.

Every method starts from scratch (no pretrained weights exist offline) and sees the same
images: the breast crops biocnn's preprocessing makes at the config's input size. The two
networks train with the same wall-clock budget per target as biocnn's training loop
(``--budget-seconds``; biocnn's decoding before the loop and its operating point after it are
timed apart: ``setup_seconds``, ``post_train_seconds``), with
class-weighted BCE, flips, Adam, and the best epoch on a patient-level validation split
of the train manifest (the same split biocnn draws). AUC intervals: 95% bootstrap over
patients. Writes JSON ``{"biocnn"|"densenet121"|"resnet18"|"classical": {"malignant": {"auc",
"auc_ci_low", "auc_ci_high"}, "abnormal": {...}, "train_seconds"}, "budget_seconds": N}``
(biocnn also ``pointing_game``, ``crop_failures``, ``ece``, ``setup_seconds``,
``post_train_seconds`` and per target ``stopped``, ``epochs``, ``steps``) and prints a table.
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from peers.biocnn_cli import timed_train

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from biocnn.config import load_config  # noqa: E402
from biocnn.io.atomic import write_json  # noqa: E402
from biocnn.mammo import metrics as M  # noqa: E402
from biocnn.mammo.config import MammoConfig  # noqa: E402
from biocnn.mammo.data import decode_all, patient_split, read_manifest  # noqa: E402
from biocnn.metrics import roc_auc  # noqa: E402

TARGETS = {"malignant": "label", "abnormal": "abnormal"}
CONFIG = REPO / "configs" / "mammo_screening.yaml"
METHODS = ("biocnn", "densenet121", "resnet18", "classical")


def column(manifest: Path, name: str) -> list[int]:
    """One 0/1 column of a manifest, in row order."""
    with open(manifest, newline="", encoding="utf-8") as fh:
        return [int(row[name]) for row in csv.DictReader(fh)]


def decode(manifest: Path, size: tuple[int, int]) -> tuple[np.ndarray, list, list]:
    """biocnn's preprocessing of every image of ``manifest``: (images, records, failures)."""
    records = read_manifest(manifest)
    decoded = decode_all([r.path for r in records], size, None, 2, desc=f"decoding {manifest.name}")
    failures = [(str(records[d.index].path), d.reason) for d in decoded if d.image is None]
    if failures:
        raise SystemExit(f"{manifest}: {len(failures)} image(s) cannot be preprocessed: {failures[:3]}")
    return np.stack([d.image for d in decoded]).astype(np.float32), records, decoded


def crop_failures(records, decoded) -> int:
    """Views whose crop loses part of a lesion circle (more than a tenth of its area is outside
    the crop): a crop that cuts the breast shows up here."""
    from biocnn.synthetic.mammo import read_mask

    lost = 0
    for r, d in zip(records, decoded):
        if r.mask is None:
            continue
        mask = read_mask(r.mask).astype(np.float32)
        if mask.sum() == 0:
            continue
        g = d.geometry
        m = mask[:, ::-1] if g.flipped else mask
        y0, y1, x0, x1 = g.box
        if m[y0:y1, x0:x1].sum() < 0.9 * m.sum():
            lost += 1
    return lost


def auc_entry(labels, scores, patients, n_boot: int) -> dict[str, float]:
    low, high = M.bootstrap_auc(labels, scores, patients, n_boot)
    return {"auc": roc_auc(labels, scores), "auc_ci_low": low, "auc_ci_high": high}


# ----------------------------------------------------------------------------- biocnn
def run_biocnn(train: Path, test: Path, target: str, work: Path, budget: float) -> dict:
    """Train and evaluate biocnn through the command line for one target column."""
    col = TARGETS[target]
    work = work.resolve()  # the command runs in the repository root
    model, evaluation = work / f"biocnn_{target}", work / f"biocnn_{target}_eval"
    cmd = ["mammo", "train", "--config", str(CONFIG), "--manifest", str(train.resolve()), "--out", str(model)]
    cmd += ["--label-column", col, "--max-seconds", str(budget)]
    timing = timed_train(cmd, model, work / f"biocnn_{target}_train.log")
    if timing["train_seconds"] > budget:
        print(f"biocnn ({target}) loop took {timing['train_seconds']:.0f} s, over the {budget:.0f} s budget")
    cmd = [sys.executable, "-m", "biocnn", "mammo", "evaluate", "--model", str(model), "--manifest", str(test)]
    cmd += ["--out", str(evaluation), "--heatmaps", "4", "--label-column", col]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    metrics = json.loads((evaluation / "metrics.json").read_text())
    rows = list(csv.DictReader(open(evaluation / "predictions.csv", newline="", encoding="utf-8")))
    return {
        **timing,
        "probs": [float(r["probability"]) for r in rows],
        "pointing_game": metrics.get("pointing_game"),
        "pointing_game_images": metrics.get("pointing_game_images"),
        "ece": metrics["image"]["ece"],
    }


# ----------------------------------------------------------------------------- peers
def peer_network(name: str) -> torch.nn.Module:
    from monai.networks import nets

    if name == "densenet121":
        return nets.DenseNet121(spatial_dims=2, in_channels=1, out_channels=1)
    return nets.resnet18(spatial_dims=2, n_input_channels=1, num_classes=1)


@torch.no_grad()
def peer_scores(net: torch.nn.Module, images: np.ndarray, batch_size: int = 8) -> np.ndarray:
    net.eval()
    starts = range(0, len(images), batch_size)
    out = [net(torch.from_numpy(images[i : i + batch_size])[:, None]).reshape(-1) for i in starts]
    return torch.sigmoid(torch.cat(out)).numpy()


def train_peer(
    name: str, x: np.ndarray, y: np.ndarray, val: np.ndarray, budget: float, seed: int, batch_size: int = 8
) -> tuple[torch.nn.Module, float]:
    """Train ``name`` from scratch for ``budget`` seconds; the best validation AUC's weights."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    net = peer_network(name)
    opt = torch.optim.Adam(net.parameters(), lr=1e-4 if name == "densenet121" else 1e-3)
    train_idx, val_idx = np.flatnonzero(~val), np.flatnonzero(val)
    pos_weight = torch.tensor((y[train_idx] == 0).sum() / max((y[train_idx] == 1).sum(), 1))
    start = time.perf_counter()
    best, best_state = -1.0, None
    while time.perf_counter() - start < budget:
        net.train()
        order = rng.permutation(train_idx)
        for i in range(0, len(order), batch_size):
            if time.perf_counter() - start >= budget:
                break
            batch = order[i : i + batch_size]
            xb = torch.from_numpy(x[batch])[:, None]
            if rng.random() < 0.5:
                xb = xb.flip(-1)
            if rng.random() < 0.5:
                xb = xb.flip(-2)
            loss = F.binary_cross_entropy_with_logits(
                net(xb).reshape(-1), torch.from_numpy(y[batch]).float(), pos_weight=pos_weight
            )
            opt.zero_grad()
            loss.backward()
            opt.step()
        auc = roc_auc(y[val_idx], peer_scores(net, x[val_idx]))
        auc = 0.5 if np.isnan(auc) else auc
        if auc > best or best_state is None:
            best, best_state = auc, {k: v.clone() for k, v in net.state_dict().items()}
    net.load_state_dict(best_state)
    return net, time.perf_counter() - start


# ----------------------------------------------------------------------------- classical
def texture_features(image: np.ndarray) -> np.ndarray:
    """Intensity statistics and grey-level co-occurrence texture of the breast (image > 0)."""
    from scipy import stats
    from skimage.feature import graycomatrix, graycoprops

    breast = image > 0
    v = image[breast] if breast.any() else np.zeros(1, np.float32)
    feats = [v.mean(), v.std(), stats.skew(v), stats.kurtosis(v), *np.percentile(v, [5, 25, 50, 75, 95, 99])]
    q = (np.clip(image, 0, 1) * 31).astype(np.uint8)
    glcm = graycomatrix(q, [1, 3], [0, np.pi / 2], levels=32, symmetric=True).astype(np.float64)
    glcm[0], glcm[:, 0] = 0, 0  # the background (0) is not breast texture
    glcm /= np.maximum(glcm.sum(axis=(0, 1), keepdims=True), 1)
    for prop in ("contrast", "homogeneity", "energy", "correlation"):
        feats += list(graycoprops(glcm, prop).ravel())
    feats.append(breast.mean())
    return np.nan_to_num(np.asarray(feats, np.float64))


def classical_scores(x_train: np.ndarray, y: np.ndarray, x_test: np.ndarray) -> np.ndarray:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    model = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=5000, class_weight="balanced"))
    return model.fit(x_train, y).predict_proba(x_test)[:, 1]


# ----------------------------------------------------------------------------- main
def fmt(entry: dict) -> str:
    return f"{entry['auc']:.3f} [{entry['auc_ci_low']:.2f}, {entry['auc_ci_high']:.2f}]"


def table(result: dict) -> str:
    lines = [
        f"budget: {result['budget_seconds']:.0f} s of training per method and target, 2 CPU threads, all from scratch",
        f"{'method':<12} {'malignant AUC [95% CI]':<26} {'abnormal AUC [95% CI]':<26} {'train s':>8}",
    ]
    for name in METHODS:
        r = result[name]
        lines.append(f"{name:<12} {fmt(r['malignant']):<26} {fmt(r['abnormal']):<26} {r['train_seconds']:>8.0f}")
    b = result["biocnn"]
    stops = ", ".join(f"{t} {b[t]['stopped']} after {b[t]['epochs']} epochs / {b[t]['steps']} steps" for t in TARGETS)
    lines.append(
        f"train s: the training loop (biocnn: stopped by --max-seconds = the budget; {stops}); outside it, "
        f"biocnn's decoding {b['setup_seconds']:.0f} s and operating point (calibration, test metrics) "
        f"{b['post_train_seconds']:.0f} s, both targets"
    )
    pg = b["pointing_game"]
    lines.append(
        f"biocnn: pointing game {'n/a' if pg is None else f'{pg:.2f}'} ({b['pointing_game_images']} findings with "
        f"circles, abnormal model), ECE {b['ece']:.3f} (malignant model), crop failures {b['crop_failures']}"
    )
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--train-manifest", required=True, type=Path)
    ap.add_argument("--test-manifest", required=True, type=Path)
    ap.add_argument("--out", required=True, type=Path, help="result JSON")
    ap.add_argument("--budget-seconds", type=float, default=360.0, help="training wall clock per method and target")
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    ap.add_argument("--n-boot", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", type=Path, help="keep biocnn's models and evaluations here (default: a temporary folder)")
    args = ap.parse_args()
    torch.set_num_threads(2)
    cfg = load_config(CONFIG, MammoConfig, {"data.manifest": str(args.train_manifest)})
    size = (cfg.input.height, cfg.input.width)
    x_train, train_records, _ = decode(args.train_manifest, size)
    x_test, test_records, test_decoded = decode(args.test_manifest, size)
    patients = [r.patient_id for r in test_records]
    split = patient_split(train_records, cfg.data.val_fraction, 0.0, cfg.data.split_seed)
    val = np.array([split[r.patient_id] == "val" for r in train_records])
    result: dict = {
        "budget_seconds": args.budget_seconds,
        "train_manifest": str(args.train_manifest),
        "test_manifest": str(args.test_manifest),
        "input_size": list(size),
        "pretrained": False,
        "threads": torch.get_num_threads(),
    }
    features = None
    with tempfile.TemporaryDirectory(prefix="mammo_real_") as tmp:
        if args.work is not None:
            args.work.mkdir(parents=True, exist_ok=True)
            tmp = str(args.work)
        for name in args.methods:
            entry: dict = {"train_seconds": 0.0}
            for target, col in TARGETS.items():
                y_train = np.asarray(column(args.train_manifest, col))
                y_test = np.asarray(column(args.test_manifest, col))
                if name == "biocnn":
                    run = run_biocnn(args.train_manifest, args.test_manifest, target, Path(tmp), args.budget_seconds)
                    probs, seconds = np.asarray(run["probs"]), run["train_seconds"]
                    entry[target] = {k: run[k] for k in ("pointing_game", "pointing_game_images", "ece")}
                    entry[target].update({k: run[k] for k in ("stopped", "epochs", "steps")})
                    for key in ("setup_seconds", "post_train_seconds"):
                        entry[key] = entry.get(key, 0.0) + run[key]
                elif name == "classical":
                    start = time.perf_counter()
                    if features is None:
                        features = (
                            np.stack([texture_features(im) for im in x_train]),
                            np.stack([texture_features(im) for im in x_test]),
                        )
                    probs = classical_scores(features[0], y_train, features[1])
                    seconds = time.perf_counter() - start
                    entry[target] = {}
                else:
                    net, seconds = train_peer(name, x_train, y_train, val, args.budget_seconds, args.seed)
                    probs = peer_scores(net, x_test)
                    entry[target] = {}
                entry[target].update(auc_entry(y_test, probs, patients, args.n_boot))
                entry["train_seconds"] += seconds
                print(f"{name} {target}: AUC {fmt(entry[target])} ({seconds:.0f} s)", flush=True)
            if name == "biocnn":
                entry["pointing_game"] = entry["abnormal"]["pointing_game"]
                entry["pointing_game_images"] = entry["abnormal"]["pointing_game_images"]
                entry["ece"] = entry["malignant"]["ece"]
                entry["crop_failures"] = crop_failures(test_records, test_decoded)
            result[name] = entry
    write_json(args.out, result)
    if all(m in result for m in METHODS):
        print(table(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
