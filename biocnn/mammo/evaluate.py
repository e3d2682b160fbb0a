"""``biocnn mammo evaluate``: a trained model on a labelled manifest.

Writes to the output folder: ``predictions.csv`` (one row per image), ``metrics.json`` (image,
breast and exam level: AUC + 95% bootstrap interval over patients, sensitivity at 90%
specificity, specificity at 90% sensitivity, sensitivity/specificity at the stored operating
point, ECE; the pointing game of the heatmaps when the manifest has lesion masks), ``roc.png``,
``reliability.png`` and a few heatmap overlays under ``heatmaps/`` (the patch model's window map, or
Grad-CAM for the whole-image classifier: :func:`biocnn.mammo.heatmap.view_heatmaps`).
"""

from __future__ import annotations

import csv
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from biocnn.checkpoint import load_model
from biocnn.device import autocast, select_device
from biocnn.errors import InputError
from biocnn.io.atomic import atomic_open, write_json
from biocnn.io.paths import inside, safe_component
from biocnn.mammo import metrics as M
from biocnn.mammo.data import decode_all, read_manifest
from biocnn.mammo.gradcam import overlay_png, pointing_hit
from biocnn.mammo.heatmap import PatchClassifier, view_heatmaps
from biocnn.mammo.platt import calibrated_probs
from biocnn.mammo.train import read_operating_point

log = logging.getLogger(__name__)


def input_spec(config: dict[str, Any]) -> tuple[tuple[int, int], int | None, int]:
    """(height, width), depth and spatial_dims of a model directory's config."""
    inp = config.get("input", {})
    spatial_dims = int(config["model"].get("spatial_dims", 2))
    return (int(inp.get("height", 256)), int(inp.get("width", 192))), inp.get("depth"), spatial_dims


def pointing_tolerance(model, config: dict[str, Any]) -> int:
    """Pixels (model grid) the heatmap's peak may lie beside a lesion and still count as a hit.

    The patch model's heatmap peaks on a window centre, and centres are one backbone stride
    apart: half a stride. Grad-CAM's peak may sit one feature cell beside a small lesion: one
    stride.
    """
    if isinstance(model, PatchClassifier):
        return model.stride // 2
    m = config["model"]
    return int(np.prod(m.get("strides") or [1] + [2] * (len(m["channels"]) - 1)))


def heatmap_path(out: Path, index: int, record) -> Path:
    """``out/heatmaps/<manifest row>_<folder>_<laterality>_<view>.png``: the row number keeps
    single-view files of one folder apart; the folder and view (manifest text) are made safe."""
    name = f"{index + 1:05d}_{Path(record.path).parent.name}_{record.laterality}_{record.view or 'NA'}"
    return inside(out / "heatmaps", safe_component(name) + ".png")


def evaluate(
    model_dir: str | Path,
    manifest: str | Path,
    out: str | Path,
    device: str = "auto",
    heatmaps: int = 8,
    workers: int = 0,
    n_boot: int = 1000,
    batch_size: int = 16,
    label_column: str | None = None,
) -> dict[str, Any]:
    """Evaluate ``model_dir`` on ``manifest``; returns (and writes) the metrics.

    The target is the manifest's ``label_column``, by default the one the model was trained on.
    """
    if heatmaps < 0 or workers < 0:
        raise ValueError(f"heatmaps and workers must be 0 or more, got {heatmaps} and {workers}")
    out = Path(out)
    dev = select_device(device)
    model, config = load_model(model_dir, dev)
    op = read_operating_point(model_dir)
    threshold = float(op["threshold"])
    size, depth, spatial_dims = input_spec(config)
    records = read_manifest(manifest, label_column or config.get("data", {}).get("label_column", "label"))
    decoded = decode_all([r.path for r in records], size, depth, spatial_dims, workers, desc="decoding")
    failed = [(records[d.index].path, d.reason) for d in decoded if d.image is None]
    if failed:
        listing = "; ".join(f"{p}: {why}" for p, why in failed[:5])
        raise InputError(manifest, f"{len(failed)} image(s) cannot be evaluated: {listing}")
    rows: list[dict[str, Any]] = []
    hits: list[bool] = []
    shown = 0
    tolerance = pointing_tolerance(model, config)
    for start in range(0, len(records), batch_size):
        chunk = decoded[start : start + batch_size]
        x = torch.from_numpy(np.stack([d.image for d in chunk])[:, None]).to(dev)
        with autocast(dev):
            logits, cams = view_heatmaps(model, x)
        probs = calibrated_probs(logits, op.get("calibration"))
        cams = cams.cpu().numpy()
        for d, p, cam in zip(chunk, probs, cams):
            r = records[d.index]
            row = {
                "path": str(r.path),
                "patient": r.patient_id,
                "study": r.study_id,
                "laterality": r.laterality,
                "view": r.view,
                "label": r.label,
                "probability": float(p),
                "flagged": int(p >= threshold),
            }
            mask = None
            if r.label and r.mask is not None and spatial_dims == 2:
                from biocnn.synthetic.mammo import read_mask

                mask = d.geometry.apply(read_mask(r.mask).astype(np.float32)) > 0.25
                if mask.any():
                    row["pointing_hit"] = int(pointing_hit(cam, mask, tolerance=tolerance))
                    hits.append(bool(row["pointing_hit"]))
            if r.label and shown < heatmaps:
                overlay_png(d.image, cam, heatmap_path(out, d.index, r), f"p={p:.2f}", outline=mask)
                shown += 1
            rows.append(row)
    labels = [r["label"] for r in rows]
    probs = [r["probability"] for r in rows]
    breasts, exams = M.aggregate(rows, config.get("aggregate", "mean"))
    result: dict[str, Any] = {
        "model": str(model_dir),
        "manifest": str(manifest),
        "aggregate": config.get("aggregate", "mean"),
        "operating_point": op,
    }
    result["image"] = M.summary(labels, probs, threshold, [r["patient"] for r in rows], n_boot)
    result["breast"] = M.summary(
        [b["label"] for b in breasts],
        [b["probability"] for b in breasts],
        threshold,
        [b["patient"] for b in breasts],
        n_boot,
    )
    result["exam"] = M.summary([e["label"] for e in exams], [e["probability"] for e in exams], threshold, None, n_boot)
    result["pointing_game"] = float(np.mean(hits)) if hits else None
    result["pointing_game_images"] = len(hits)
    result["pointing_game_tolerance_px"] = tolerance
    # The benchmark's flat keys: the image level, as the issue defines them.
    for key in ("auc", "auc_ci_low", "auc_ci_high", "sens_at_spec90", "spec_at_sens90", "ece"):
        result[key] = result["image"][key]
    _write_rows(out / "predictions.csv", rows)
    M.plot_roc(
        {
            "image": (labels, probs),
            "breast": ([b["label"] for b in breasts], [b["probability"] for b in breasts]),
            "exam": ([e["label"] for e in exams], [e["probability"] for e in exams]),
        },
        out / "roc.png",
        (result["image"]["sensitivity"], result["image"]["specificity"]),
    )
    M.plot_reliability(labels, probs, out / "reliability.png")
    write_json(out / "metrics.json", result)
    return result


def _write_rows(path: Path, rows: list[dict[str, Any]]) -> None:
    fields: list[str] = []
    for r in rows:
        fields += [k for k in r if k not in fields]
    with atomic_open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
