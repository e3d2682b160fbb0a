"""``biocnn segment report``: figures and ``summary.json`` for the final HTML report."""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path

from biocnn.checkpoint import read_json
from biocnn.io.atomic import atomic_path, write_json
from biocnn.io.paths import safe_component


def _flagged(pred_dir: Path) -> set[str]:
    """Cases ``predict`` flagged for review (none when ``predict.json`` lists no flags)."""
    info = pred_dir / "predict.json"
    return set(read_json(info).get("flagged", [])) if info.is_file() else set()


def _scatter(path: Path, name: str, metrics: dict, flagged: set[str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = metrics["per_case"]
    fig, ax = plt.subplots(figsize=(4.2, 3.6), constrained_layout=True)
    for is_flagged, colour, label in ((False, "tab:blue", "not flagged"), (True, "tab:red", "flagged for review")):
        sel = [r for r in rows if (r["case"] in flagged) == is_flagged]
        if sel:
            ax.scatter([r["score"] for r in sel], [1 - r["mean_dice"] for r in sel], s=18, c=colour, label=label)
    if flagged:
        ax.legend(fontsize=8)
    # Two lines: one line this long does not fit the figure's width.
    ax.set_xlabel("review score\n(structure uncertainty; OOD inputs raised to the threshold)", fontsize=8)
    ax.set_ylabel("1 - Dice")
    rho = metrics["spearman"]
    ax.set_title(f"{name}: Spearman {rho:.2f}" if rho is not None else f"{name}: Spearman n/a", fontsize=10)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)


def report(named: Sequence[tuple[str, str | Path, str | Path]], out_dir: str | Path) -> dict:
    """For each ``(name, metrics.json, prediction dir)``: a score-vs-error scatter (flagged
    inputs in red), the overlay of the highest-scoring case, and its headline metrics and
    flagged cases in ``summary.json``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = {}
    for name, metrics_path, pred_dir in named:
        metrics = read_json(metrics_path)
        summary[name] = {
            k: metrics[k] for k in ("cases", "dice", "dice_per_class", "hd95", "error_auroc", "spearman", "ece")
        }
        flagged = _flagged(Path(pred_dir))
        _scatter(out_dir / f"{name}_score_vs_error.png", name, metrics, flagged)
        summary[name]["flagged_for_review"] = sorted(flagged)
        worst = max(metrics["per_case"], key=lambda r: r["score"])["case"]
        overlay = Path(pred_dir) / f"{safe_component(worst)}_overlay.png"  # as predict names it
        if overlay.is_file():
            with atomic_path(out_dir / f"{name}_most_uncertain_overlay.png") as tmp:
                shutil.copyfile(overlay, tmp)
        summary[name]["most_uncertain_case"] = worst
    write_json(out_dir / "summary.json", summary)
    return summary
