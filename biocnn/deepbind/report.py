"""The DeepBind part of the final report: ``summary.json`` and PNG figures per experiment.

Reads what the workflow left for each experiment directory (``metrics.json``,
``calibration/best.json``, ``motifs/``, ``mutation_maps/``, ``scan.*``) and writes:

* ``summary.json``: test ROC/PR AUC, the calibrated trial, best JASPAR matches, scan stats;
* ``auc.png``: test ROC AUC of every experiment;
* ``<experiment>_scan.png``: the scan's score track (with planted sites when known);
* ``<experiment>_motif.png`` and ``<experiment>_mutation_map.png``: the best-matching motif's
  logo and the first mutation map, copied so the report has everything in one folder.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from biocnn.errors import InputError
from biocnn.io.atomic import atomic_path, write_json


def _json(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.is_file() else None


def _plot(path: Path, draw) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3))
    draw(ax)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)


def _scan_figure(path: Path, bedgraph: Path, sites: Path | None, title: str) -> None:
    chrom_rows = [line.split("\t") for line in bedgraph.read_text().splitlines()]
    if not chrom_rows:
        return
    first = chrom_rows[0][0]
    rows = [r for r in chrom_rows if r[0] == first]
    x = np.array([(int(r[1]) + int(r[2])) / 2 for r in rows])
    y = np.array([float(r[3]) for r in rows])

    def draw(ax):
        ax.plot(x / 1e3, y, lw=0.6, color="tab:blue")
        if sites is not None and sites.is_file():
            for line in sites.read_text().splitlines():
                parts = line.split("\t")
                if parts[0] == first:
                    ax.axvline(int(parts[1]) / 1e3, color="tab:red", lw=0.5, alpha=0.5)
        ax.set_xlabel(f"{first} position (kb)")
        ax.set_ylabel("score")
        ax.set_title(title + (" (red: planted sites)" if sites is not None and sites.is_file() else ""), fontsize=9)

    _plot(path, draw)


def build_report(experiments: list[str], results_dir: str | Path, out_dir: str | Path) -> dict[str, Any]:
    """Collect the outputs of every experiment under ``results_dir`` into ``out_dir``."""
    results, out = Path(results_dir), Path(out_dir)
    summary: dict[str, Any] = {"experiments": {}}
    for exp in experiments:
        d = results / exp
        metrics = _json(d / "metrics.json")
        if metrics is None:
            raise InputError(d / "metrics.json", "missing: run 'deepbind evaluate' for this experiment first")
        best = _json(d / "calibration" / "best.json") or {}
        motifs = _json(d / "motifs" / "summary.json") or {}
        scan = _json(d / "scan.json") or {}
        summary["experiments"][exp] = {
            "roc_auc": metrics.get("roc_auc"),
            "pr_auc": metrics.get("pr_auc"),
            "n_test": metrics.get("n"),
            "calibration": {
                "trial": best.get("trial"),
                "mean_cv_auc": best.get("mean_auc"),
                "params": best.get("params"),
            },
            "best_jaspar_matches": motifs.get("best_matches", [])[:3],
            "scan": {k: scan.get(k) for k in ("bp", "windows", "peaks", "bp_per_s")},
        }
        if (d / "scan.bedgraph").is_file():
            _scan_figure(out / f"{exp}_scan.png", d / "scan.bedgraph", d / "data" / "genome_sites.bed", exp)
        matches = motifs.get("best_matches", [])
        if matches and (d / "motifs" / "logos" / f"{matches[0]['motif']}.png").is_file():
            shutil.copyfile(d / "motifs" / "logos" / f"{matches[0]['motif']}.png", out / f"{exp}_motif.png")
        maps = sorted((d / "mutation_maps").glob("*.png")) if (d / "mutation_maps").is_dir() else []
        if maps:
            out.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(maps[0], out / f"{exp}_mutation_map.png")
    names = list(summary["experiments"])
    aucs = [summary["experiments"][n]["roc_auc"] or 0.0 for n in names]

    def draw(ax):
        ax.bar(names, aucs, color="tab:green")
        ax.set_ylim(0.5, 1.0)
        ax.set_ylabel("test ROC AUC")
        ax.set_title("DeepBind: held-out ROC AUC per experiment", fontsize=9)

    _plot(out / "auc.png", draw)
    summary["mean_roc_auc"] = float(np.mean(aucs)) if aucs else None
    write_json(out / "summary.json", summary)
    return summary
