"""``biocnn mammo report``: the figures and headline numbers the HTML report shows.

Copies the ROC curve, the reliability diagram and a few heatmap overlays of flagged images
(Grad-CAM, or the patch model's window map) into ``OUT`` and writes ``summary.json`` (metrics)
and ``figures.json`` (captions).
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path
from typing import Any

from biocnn.errors import InputError
from biocnn.io.atomic import atomic_path, write_json
from biocnn.io.paths import inside


def _load(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise InputError(path, "not found")
    return json.loads(path.read_text())


def _copy(src: Path, dst: Path) -> None:
    with atomic_path(dst) as tmp:
        shutil.copyfile(src, tmp)


def heatmap_kind(model_dir: str | Path | None) -> str:
    """What the score folder's heatmaps show, from the scoring model's ``config.json``."""
    try:
        name = json.loads((Path(model_dir) / "config.json").read_text())["model"]["name"]
    except (TypeError, OSError, ValueError, KeyError):
        return "Heatmap"
    return "Patch-model window map" if name == "patch_classifier" else "Grad-CAM (last backbone stage)"


def build_report(evaluation: str | Path, scores: str | Path, out: str | Path, heatmaps: int = 4) -> dict[str, Any]:
    """Gather the evaluation and scoring results under ``out``; returns the summary."""
    evaluation, scores, out = Path(evaluation), Path(scores), Path(out)
    metrics = _load(evaluation / "metrics.json")
    scored = _load(scores / "summary.json")
    captions = {}
    for name, caption in (
        ("roc.png", "ROC curves of held-out images, breasts and exams, with the operating point"),
        ("reliability.png", "Reliability diagram of image-level probabilities"),
    ):
        if (evaluation / name).is_file():
            _copy(evaluation / name, out / name)
            captions[name] = caption
    rows = []
    if (scores / "scores.csv").is_file():
        with open(scores / "scores.csv", newline="") as fh:
            rows = [r for r in csv.DictReader(fh) if r.get("heatmap")]
    rows.sort(key=lambda r: -float(r["probability"]))
    kind = heatmap_kind(scored.get("model"))
    for i, r in enumerate(rows[:heatmaps]):
        name = f"gradcam_{i + 1}.png"
        _copy(inside(scores, r["heatmap"]), out / name)  # a path read from a table must stay in its folder
        captions[name] = (
            f"{kind}, {r['laterality']} {r['view']}, "
            f"probability {float(r['probability']):.2f}{' (flagged)' if r['flagged'] == '1' else ''}"
        )
    summary = {
        "image": {
            k: metrics["image"][k]
            for k in (
                "n",
                "positives",
                "auc",
                "auc_ci_low",
                "auc_ci_high",
                "sens_at_spec90",
                "spec_at_sens90",
                "sensitivity",
                "specificity",
                "ece",
                "threshold",
            )
        },
        "breast_auc": metrics["breast"]["auc"],
        "exam_auc": metrics["exam"]["auc"],
        "pointing_game": metrics.get("pointing_game"),
        "scoring": {k: scored[k] for k in ("files_seen", "scored", "failed", "exams", "flagged_images")},
        "scoring_images_per_second": scored["this_run"]["images_per_second"],
    }
    write_json(out / "figures.json", captions)
    write_json(out / "summary.json", summary)
    return summary
