"""``biocnn segment evaluate``: segmentation quality and uncertainty quality.

* Dice per class and HD95 per class (MONAI metrics; HD95 in mm for NIfTI, using the voxel
  size, in pixels for 2D), and the same per region, a named group of label values scored as
  one structure (``data.regions`` of the model, e.g. the BraTS whole tumour {1, 2, 3, 4});
* ``error_auroc``: AUROC of voxel predictive entropy for finding wrong voxels (pooled over
  cases, a seeded subsample of voxels per case);
* ``spearman``: Spearman correlation of the image-level score with 1 - mean foreground Dice;
* ``ece``: expected calibration error of the top-class probability (15 equal-width bins).
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from biocnn.checkpoint import read_json
from biocnn.errors import InputError
from biocnn.io.atomic import write_json
from biocnn.io.paths import safe_component
from biocnn.metrics import expected_calibration_error, roc_auc
from biocnn.segment.data import find_cases, label_to_index

MAX_VOXELS_PER_CASE = 200_000
# Equal-width confidence bins of the ECE (here and in the temperature scaling's report).
ECE_BINS = 15


def dice_hd95(pred: np.ndarray, truth: np.ndarray, num_classes: int, spacing=None) -> tuple[list[float], list[float]]:
    """Per foreground class: Dice and HD95 (MONAI). Both empty: Dice 1, HD95 0; one empty: HD95 NaN."""
    import torch
    from monai.metrics import compute_dice, compute_hausdorff_distance
    from monai.networks.utils import one_hot

    p = one_hot(torch.as_tensor(pred)[None, None].long(), num_classes)
    t = one_hot(torch.as_tensor(truth)[None, None].long(), num_classes)
    dice = compute_dice(p, t, include_background=False, ignore_empty=False)[0].tolist()
    hd = []
    for c in range(1, num_classes):
        has_p, has_t = bool(p[0, c].any()), bool(t[0, c].any())
        if not has_p and not has_t:
            hd.append(0.0)
        elif has_p != has_t:
            hd.append(float("nan"))
        else:
            hd.append(
                float(
                    compute_hausdorff_distance(
                        p[:, c : c + 1], t[:, c : c + 1], include_background=True, percentile=95, spacing=spacing
                    )[0, 0]
                )
            )
    return [float(d) for d in dice], hd


def region_dice_hd95(
    pred: np.ndarray, truth: np.ndarray, label_values: Sequence[int], regions: dict[str, Sequence[int]], spacing=None
) -> tuple[dict[str, float], dict[str, float]]:
    """Dice and HD95 per region: the class-index maps ``pred`` and ``truth`` reduced to "in the
    region's label values or not" (:func:`dice_hd95` of the two binary maps)."""
    dice, hd = {}, {}
    for name, values in regions.items():
        classes = [list(label_values).index(v) for v in values]
        d, h = dice_hd95(np.isin(pred, classes), np.isin(truth, classes), 2, spacing)
        dice[name], hd[name] = d[0], h[0]
    return dice, hd


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman rank correlation (NaN for fewer than 3 cases or constant input)."""
    from scipy.stats import spearmanr

    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan")
    return float(spearmanr(x, y).statistic)


def _read_outputs(pred_dir: Path, case_id: str, spatial_dims: int):
    from biocnn.segment.predict import output_path  # the names predict wrote

    if spatial_dims == 2:
        import tifffile

        from biocnn.io.images import read_label

        label = read_label(output_path(pred_dir, case_id, "label.png"))
        prob = tifffile.imread(output_path(pred_dir, case_id, "prob.tif"))
        ent = tifffile.imread(output_path(pred_dir, case_id, "entropy.tif"))
        return label, prob, ent, None
    from biocnn.io.nifti import read_volume

    label, img = read_volume(output_path(pred_dir, case_id, "label.nii.gz"), dtype=np.int64)
    prob, _ = read_volume(output_path(pred_dir, case_id, "prob.nii.gz"))
    ent, _ = read_volume(output_path(pred_dir, case_id, "entropy.nii.gz"))
    return label, np.moveaxis(prob, -1, 0), ent, [float(z) for z in img.header.get_zooms()[:3]]


def evaluate(
    pred_dir: str | Path,
    labels_dir: str | Path,
    out: str | Path | None = None,
    seed: int = 0,
    datalist_key: str = "test",
) -> dict[str, Any]:
    """Compare a ``predict`` output directory with the true labels (a folder, or a datalist whose
    ``datalist_key`` list is read); write ``out`` (JSON)."""
    pred_dir = Path(pred_dir)
    info = read_json(pred_dir / "predict.json")
    dims, values, regions = info["spatial_dims"], info["label_values"], info.get("regions", {})
    num_classes = len(values)
    rows_path = pred_dir / "uncertainty.csv"
    if not rows_path.is_file():
        raise InputError(rows_path, "not found (run biocnn segment predict first)")
    with open(rows_path, newline="") as fh:
        scores = {r["case"]: float(r["score"]) for r in csv.DictReader(fh)}
    truth_cases = {
        c.id: c
        for c in find_cases(
            labels_dir, dims, info.get("modalities", []), require_labels=True, datalist_key=datalist_key
        )
    }
    missing = sorted(set(scores) - set(truth_cases))
    if missing:
        raise InputError(labels_dir, f"no labels for predicted case(s) {', '.join(missing[:5])}")
    rng = np.random.default_rng(seed)
    per_case, unc, wrong, conf, right = [], [], [], [], []
    for cid in sorted(scores):
        case = truth_cases[cid]
        if dims == 2:
            from biocnn.io.images import read_label

            truth_values = read_label(case.label)
        else:
            from biocnn.io.nifti import read_label_volume

            truth_values, _ = read_label_volume(case.label)
        truth = label_to_index(truth_values, values, cid, case.label)
        pred_values, prob, ent, spacing = _read_outputs(pred_dir, cid, dims)
        if pred_values.shape != truth.shape:
            raise InputError(
                case.label, f"case {cid}: label shape {truth.shape} differs from the prediction's {pred_values.shape}"
            )
        pred = label_to_index(pred_values, values, cid, pred_dir / f"{safe_component(cid)}_label")
        dice, hd = dice_hd95(pred, truth, num_classes, spacing)
        region_dice, region_hd = region_dice_hd95(pred, truth, values, regions, spacing)
        per_case.append(
            {
                "case": cid,
                "dice": dice,
                "hd95": hd,
                "dice_per_region": region_dice,
                "hd95_per_region": region_hd,
                "mean_dice": float(np.mean(dice)),
                "score": scores[cid],
            }
        )
        flat = np.arange(truth.size)
        if truth.size > MAX_VOXELS_PER_CASE:
            flat = rng.choice(truth.size, MAX_VOXELS_PER_CASE, replace=False)
        w = (pred.ravel() != truth.ravel())[flat]
        unc.append(ent.ravel()[flat])
        wrong.append(w)
        conf.append(prob.reshape(num_classes, -1).max(0)[flat])
        right.append(~w)
    unc_a, wrong_a = np.concatenate(unc), np.concatenate(wrong)
    dice_arr = np.array([r["dice"] for r in per_case])
    hd_arr = np.array([r["hd95"] for r in per_case], dtype=float)
    metrics = {
        "cases": len(per_case),
        "label_values": values,
        "dice_per_class": {str(v): float(np.mean(dice_arr[:, i])) for i, v in enumerate(values[1:])},
        "hd95_per_class": {str(v): _nanmean(hd_arr[:, i]) for i, v in enumerate(values[1:])},
        "dice_per_region": {r: float(np.mean([c["dice_per_region"][r] for c in per_case])) for r in regions},
        "hd95_per_region": {r: _nanmean([c["hd95_per_region"][r] for c in per_case]) for r in regions},
        "dice": float(dice_arr.mean()),
        "hd95": _nanmean(hd_arr.ravel()),
        "error_auroc": roc_auc(wrong_a, unc_a),
        "spearman": spearman([r["score"] for r in per_case], [1 - r["mean_dice"] for r in per_case]),
        "ece": expected_calibration_error(np.concatenate(right).astype(float), np.concatenate(conf), ECE_BINS),
        "per_case": per_case,
    }
    metrics = finite_or_none(metrics)
    if out is not None:
        write_json(out, metrics)
    return metrics


def metrics_table(metrics: dict[str, Any]) -> str:
    """The headline numbers of :func:`evaluate`'s result as a text table: Dice and HD95 per class
    and per region, then the summary metrics."""

    def num(x: float | None) -> str:
        return "n/a" if x is None else f"{x:.4f}"

    lines = [f"{'structure':<16} {'Dice':>8} {'HD95':>8}"]
    for v, d in metrics["dice_per_class"].items():
        lines.append(f"{'class ' + v:<16} {num(d):>8} {num(metrics['hd95_per_class'][v]):>8}")
    for r, d in metrics.get("dice_per_region", {}).items():
        lines.append(f"{'region ' + r:<16} {num(d):>8} {num(metrics['hd95_per_region'][r]):>8}")
    lines.append(
        f"{metrics['cases']} cases: mean Dice {num(metrics['dice'])}, HD95 {num(metrics['hd95'])}, "
        f"error AUROC {num(metrics['error_auroc'])}, Spearman {num(metrics['spearman'])}, ECE {num(metrics['ece'])}"
    )
    return "\n".join(lines)


def finite_or_none(obj: Any) -> Any:
    """NaN/Inf -> None (JSON null), recursively: strict JSON readers reject NaN."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite_or_none(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [finite_or_none(v) for v in obj]
    return obj


def _nanmean(x: np.ndarray) -> float:
    x = np.asarray(x, dtype=float)
    x = x[np.isfinite(x)]
    return float(x.mean()) if x.size else math.nan
