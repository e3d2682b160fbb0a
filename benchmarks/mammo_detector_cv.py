"""Research for issue 25 (not shipped in biocnn): a pixel-level lesion detector on hand-made filter
responses, cross-validated by woman inside a training manifest.

Each pixel of the cropped breast (biocnn's preprocessing) is described by 14 responses: intensity
against the breast median and as a rank, differences of Gaussians at four scales, white top-hats at
two sizes (calcifications), local spread, the smoothed intensity minus the *other breast's* at the
same place (both views are in the canonical orientation), depth in the breast and position. A
gradient-boosted classifier learns lesion-circle pixels against normal tissue, half the negatives
taken from the densest tissue (hard negatives: the patch CNN learned "dense" instead of "lesion").
The image score aggregates the smoothed probability map (max, top-k means, ...), optionally minus
the other breast's score. Prints pooled held-out AUCs per aggregation and the pointing game.

    python benchmarks/mammo_detector_cv.py --manifest data/real/mias_train.csv [--repeats 2]

Only the training manifest is read: this is how ideas were chosen, never on the test women.
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from pathlib import Path

import numpy as np
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parent))
from mammo_real import decode  # noqa: E402

from biocnn.mammo.train import lesion_in_model_grid  # noqa: E402

AGGREGATES = ("max", "top50", "top500", "p99", "mean")


def feature_maps(image: np.ndarray, other: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(H, W, 14)`` filter responses and the eroded breast mask they are used in."""
    breast = image > 0
    inner = ndimage.binary_erosion(breast, iterations=6)
    median = np.median(image[inner]) if inner.any() else 0.0
    g = {s: ndimage.gaussian_filter(image, s) for s in (1, 2, 4, 8, 16, 32)}
    rank = np.zeros_like(image)
    values = np.sort(image[inner])
    rank[breast] = np.searchsorted(values, image[breast]) / max(len(values), 1)
    spread = np.sqrt(np.maximum(ndimage.uniform_filter(image**2, 9) - ndimage.uniform_filter(image, 9) ** 2, 0))
    depth = ndimage.distance_transform_edt(breast)
    h, w = image.shape
    maps = [
        image - median,
        rank,
        g[2] - g[4],
        g[4] - g[8],
        g[8] - g[16],
        g[16] - g[32],
        g[1] - g[2],
        ndimage.white_tophat(image, size=5),
        ndimage.white_tophat(image, size=11),
        spread,
        g[8] - ndimage.gaussian_filter(other, 8),
        depth / (depth.max() + 1e-6),
        np.tile(np.arange(w) / w, (h, 1)),
        np.tile((np.arange(h) / h)[:, None], (1, w)),
    ]
    return np.stack(maps, -1).astype(np.float32), inner


def main() -> int:
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import GroupKFold

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--manifest", type=Path, required=True)
    ap.add_argument("--size", type=int, nargs=2, default=(512, 352))
    ap.add_argument("--repeats", type=int, default=2, help="CV repeats with different fold draws")
    args = ap.parse_args()

    images, records, decoded = decode(args.manifest, tuple(args.size))
    with open(args.manifest, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    targets = {
        "abnormal": np.array([int(r["abnormal"]) for r in rows]),
        "malignant": np.array([int(r["label"]) for r in rows]),
    }
    groups = np.array([r["patient_id"] for r in rows])
    lesions = [lesion_in_model_grid(r, d) for r, d in zip(records, decoded)]
    other = np.array([[k for k in np.nonzero(groups == g)[0] if k != i][0] for i, g in enumerate(groups)])
    t0 = time.process_time()
    maps = [feature_maps(images[i], images[other[i]]) for i in range(len(images))]
    rng = np.random.default_rng(0)

    def samples(idx, y):
        xs, ys = [], []
        for i in idx:
            feats, inner = maps[i]
            if y[i] and lesions[i] is not None and (lesions[i] & inner).any():
                pos = np.argwhere(lesions[i] & inner)
                pick = pos[rng.choice(len(pos), min(300, len(pos)), replace=False)]
                xs.append(feats[pick[:, 0], pick[:, 1]])
                ys.append(np.ones(len(pick)))
            elif targets["abnormal"][i] == 0:
                neg = np.argwhere(inner)
                dense = neg[feats[..., 1][inner] > 0.9]
                pick = np.vstack(
                    [
                        neg[rng.choice(len(neg), 300, replace=False)],
                        dense[rng.choice(len(dense), min(150, len(dense)), replace=False)],
                    ]
                )
                xs.append(feats[pick[:, 0], pick[:, 1]])
                ys.append(np.zeros(len(pick)))
        return np.vstack(xs), np.concatenate(ys)

    for name, y in targets.items():
        results, hits = [], []
        for rep in range(args.repeats):
            order = dict(zip(np.unique(groups), np.random.default_rng(rep).permutation(len(np.unique(groups)))))
            folds = np.array([order[g] for g in groups])
            scores = np.zeros((len(y), len(AGGREGATES)))
            for train, test in GroupKFold(5).split(images, y, folds):
                clf = HistGradientBoostingClassifier(
                    max_iter=150, learning_rate=0.1, max_leaf_nodes=15, l2_regularization=1.0, random_state=0
                ).fit(*samples(train, y))
                for i in test:
                    feats, inner = maps[i]
                    prob = np.zeros(inner.shape, np.float32)
                    prob[inner] = clf.predict_proba(feats[inner])[:, 1]
                    prob = ndimage.gaussian_filter(prob, 4)
                    top = np.sort(prob[inner])[::-1]
                    scores[i] = [top[0], top[:50].mean(), top[:500].mean(), np.percentile(top, 99), top.mean()]
                    if y[i] and lesions[i] is not None and lesions[i].any():
                        peak = np.unravel_index(np.argmax(np.where(inner, prob, -1)), prob.shape)
                        hits.append(bool(ndimage.binary_dilation(lesions[i])[peak]))
            auc = {a: roc_auc_score(y, scores[:, k]) for k, a in enumerate(AGGREGATES)}
            auc |= {
                f"{a} - other breast": roc_auc_score(y, scores[:, k] - scores[other, k])
                for k, a in enumerate(AGGREGATES)
            }
            results.append(auc)
        print(f"\n{name} ({y.sum()} of {len(y)} views; {args.repeats} x 5-fold CV by woman)")
        for key in results[0]:
            vals = [r[key] for r in results]
            print(f"  {key:22s} AUC {np.mean(vals):.3f} ({', '.join(f'{v:.3f}' for v in vals)})")
        print(f"  pointing game (peak within 1 px of the circle): {np.mean(hits):.2f} over {len(hits)} findings")
    print(f"\nCPU seconds: {time.process_time() - t0:.0f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
