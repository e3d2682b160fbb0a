"""``biocnn segment report``: figures and ``summary.json`` for the final HTML report."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Sequence

import numpy as np

from biocnn.checkpoint import read_json
from biocnn.io.atomic import atomic_path, write_json


def _scatter(path: Path, name: str, metrics: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = metrics["per_case"]
    fig, ax = plt.subplots(figsize=(4.2, 3.6), constrained_layout=True)
    ax.scatter([r["score"] for r in rows], [1 - r["mean_dice"] for r in rows], s=18)
    ax.set_xlabel("image-level uncertainty score")
    ax.set_ylabel("1 - Dice")
    rho = metrics["spearman"]
    ax.set_title(f"{name}: Spearman {rho:.2f}" if rho is not None else f"{name}: Spearman n/a", fontsize=10)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)


def report(named: Sequence[tuple[str, str | Path, str | Path]], out_dir: str | Path) -> dict:
    """For each ``(name, metrics.json, prediction dir)``: a score-vs-error scatter, the overlay
    of the most uncertain case, and its headline metrics in ``summary.json``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = {}
    for name, metrics_path, pred_dir in named:
        metrics = read_json(metrics_path)
        summary[name] = {k: metrics[k] for k in ("cases", "dice", "dice_per_class", "hd95", "error_auroc",
                                                 "spearman", "ece")}
        _scatter(out_dir / f"{name}_score_vs_error.png", name, metrics)
        worst = max(metrics["per_case"], key=lambda r: r["score"])["case"]
        overlay = Path(pred_dir) / f"{worst}_overlay.png"
        if overlay.is_file():
            with atomic_path(out_dir / f"{name}_most_uncertain_overlay.png") as tmp:
                shutil.copyfile(overlay, tmp)
        summary[name]["most_uncertain_case"] = worst
    write_json(out_dir / "summary.json", summary)
    return summary
