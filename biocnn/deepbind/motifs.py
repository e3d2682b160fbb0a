"""Motifs learned by the detectors: PFMs, one MEME file, logos, JASPAR matches (Tomtom).

DeepBind's recipe: run the sequences through the detectors (both strands); for every
detector and sequence take the best-scoring window; keep it when its activation exceeds
``top_fraction`` of that detector's maximum over all sequences; stack the kept windows
(padding columns count 0.25 per base) into a position frequency matrix. Each motif is then
compared with the JASPAR database shipped by ``pyjaspar`` using memelite's Tomtom.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from biocnn.deepbind.data import read_set
from biocnn.deepbind.model import DeepBind, reverse_complement_onehot
from biocnn.io.atomic import atomic_open, atomic_path, write_json
from biocnn.io.sequences import one_hot_batch

log = logging.getLogger(__name__)

PSEUDOCOUNT = 0.1


@torch.no_grad()
def detector_sites(
    model: DeepBind, x: torch.Tensor, top_fraction: float = 0.5, batch_size: int = 256
) -> tuple[np.ndarray, np.ndarray]:
    """Counts (motifs, 4, motif_len) of the windows that activate each detector, and the
    number of sites per detector."""
    k = model.motif_len
    best_val, best_win = [], []
    for start in range(0, len(x), batch_size):
        xb = x[start : start + batch_size]
        strands = [xb, reverse_complement_onehot(xb)] if model.both_strands else [xb]
        vals, wins = [], []
        for s in strands:
            padded = model.pad(s)
            act = model.backbone(padded)[-1]  # (b, m, positions)
            val, pos = act.max(dim=2)
            windows = padded.unfold(2, k, 1)  # (b, 4, positions, k)
            idx = pos[:, None, :, None].expand(-1, 4, -1, k)  # (b, 4, m, k)
            wins.append(torch.gather(windows, 2, idx).permute(0, 2, 1, 3))  # (b, m, 4, k)
            vals.append(val)
        val = torch.stack(vals)  # (strands, b, m)
        choice = val.argmax(0)  # the better strand per sequence and detector
        best_val.append(val.max(0).values)
        stacked = torch.stack(wins)  # (strands, b, m, 4, k)
        best_win.append(torch.gather(stacked, 0, choice[None, :, :, None, None].expand(1, -1, -1, 4, k))[0])
    vals = torch.cat(best_val)  # (n, m)
    wins = torch.cat(best_win)  # (n, m, 4, k)
    peak = vals.max(0).values  # (m,)
    keep = (vals > top_fraction * peak) & (vals > 0)
    counts = (wins * keep[:, :, None, None]).sum(0).numpy()
    return counts, keep.sum(0).numpy()


def to_probabilities(counts: np.ndarray) -> np.ndarray:
    """Counts (4, L) -> probabilities with a small pseudocount."""
    c = counts + PSEUDOCOUNT
    return c / c.sum(0, keepdims=True)


def write_meme(path: str | Path, motifs: dict[str, np.ndarray], sites: dict[str, int]) -> None:
    """MEME motif format (version 4), probabilities as (4, L) arrays, one MOTIF per entry."""
    with atomic_open(path) as fh:
        fh.write("MEME version 4\n\nALPHABET= ACGT\n\nstrands: + -\n\n")
        fh.write("Background letter frequencies\nA 0.25 C 0.25 G 0.25 T 0.25\n\n")
        for name, pwm in motifs.items():
            fh.write(f"MOTIF {name}\n")
            fh.write(f"letter-probability matrix: alength= 4 w= {pwm.shape[1]} nsites= {sites[name]} E= 0\n")
            for col in pwm.T:
                fh.write(" ".join(f"{v:.6f}" for v in col) + "\n")
            fh.write("\n")


def information_content(pwm: np.ndarray) -> np.ndarray:
    """Bits per base of a (4, L) probability matrix, shape (4, L), for logo heights."""
    entropy = -(pwm * np.log2(pwm)).sum(0)
    return pwm * (2.0 - entropy)


def draw_logo(path: str | Path, pwm: np.ndarray, title: str) -> None:
    """An information-content sequence logo (logomaker)."""
    import logomaker
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    df = pd.DataFrame(information_content(pwm).T, columns=list("ACGT"))
    fig, ax = plt.subplots(figsize=(max(4, pwm.shape[1] * 0.35), 2.2))
    logomaker.Logo(df, ax=ax, color_scheme="classic")
    ax.set_ylim(0, 2)
    ax.set_ylabel("bits")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png", bbox_inches="tight")
    plt.close(fig)


def jaspar_targets(collection: str = "CORE", tax_group: str = "vertebrates") -> tuple[list[str], list[np.ndarray]]:
    """Names and probability matrices (4, L) of the JASPAR motifs shipped with ``pyjaspar``."""
    from pyjaspar import jaspardb

    motifs = jaspardb().fetch_motifs(collection=collection, tax_group=[tax_group])
    names, pwms = [], []
    for m in motifs:
        counts = np.array([m.counts[b] for b in "ACGT"], dtype=np.float64)
        names.append(f"{m.matrix_id} {m.name}")
        pwms.append(to_probabilities(counts / counts.sum(0, keepdims=True) * 100))
    return names, pwms


def match_jaspar(motifs: dict[str, np.ndarray], targets: tuple[list[str], list[np.ndarray]]) -> list[dict[str, Any]]:
    """Best JASPAR match of every motif by Tomtom p-value, with E- and q-values."""
    from memelite import tomtom

    names, pwms = targets
    queries = list(motifs.values())
    p, scores, offsets, overlaps, strands = tomtom(queries, pwms)
    rows = []
    for i, name in enumerate(motifs):
        pv = np.asarray(p[i], dtype=np.float64)
        j = int(np.nanargmin(pv))
        order = np.sort(pv)
        # Benjamini-Hochberg q-value of the best match among all the targets of this query.
        q = float(min(1.0, np.min(order * len(order) / np.arange(1, len(order) + 1))))
        rows.append(
            {
                "motif": name,
                "match": names[j],
                "p_value": float(pv[j]),
                "e_value": float(pv[j] * len(pv)),
                "q_value": q,
                "offset": int(offsets[i][j]),
                "strand": "-" if int(strands[i][j]) else "+",
            }
        )
    return rows


def run_motifs(
    model_dir: str | Path,
    sequences: str | Path,
    out_dir: str | Path,
    top_fraction: float = 0.5,
    jaspar_collection: str = "CORE",
    tax_group: str = "vertebrates",
    reference: str | Path | None = None,
    max_sequences: int = 5000,
) -> dict[str, Any]:
    """The ``motifs`` verb: ``motifs.meme``, ``logos/*.png``, ``jaspar_matches.tsv``, ``summary.json``."""
    from biocnn.checkpoint import load_model

    model, _ = load_model(model_dir, "cpu", expect="deepbind")
    out = Path(out_dir)
    seqs = read_set(sequences, model.motif_len, reference=reference)
    records = [r for r in seqs.records if r.label in (None, 1.0)]  # positives carry the motif
    if len(records) > max_sequences:
        idx = np.sort(np.random.default_rng(0).choice(len(records), max_sequences, replace=False))
        records = [records[i] for i in idx]
    x = torch.from_numpy(one_hot_batch([r.seq for r in records], None, [r.id for r in records], sequences))
    counts, n_sites = detector_sites(model, x, top_fraction)
    motifs, sites = {}, {}
    for i in range(model.num_motifs):
        if n_sites[i] > 0:
            name = f"detector{i + 1:02d}"
            motifs[name] = to_probabilities(counts[i])
            sites[name] = int(n_sites[i])
    write_meme(out / "motifs.meme", motifs, sites)
    for name, pwm in motifs.items():
        draw_logo(out / "logos" / f"{name}.png", pwm, f"{name} ({sites[name]} sites)")
    matches = match_jaspar(motifs, jaspar_targets(jaspar_collection, tax_group)) if motifs else []
    with atomic_open(out / "jaspar_matches.tsv") as fh:
        fh.write("motif\tn_sites\tbest_match\tp_value\te_value\tq_value\toffset\tstrand\n")
        for row in matches:
            fh.write(
                f"{row['motif']}\t{sites[row['motif']]}\t{row['match']}\t{row['p_value']:.3g}\t"
                f"{row['e_value']:.3g}\t{row['q_value']:.3g}\t{row['offset']}\t{row['strand']}\n"
            )
        for i in range(model.num_motifs):
            if n_sites[i] == 0:
                fh.write(f"detector{i + 1:02d}\t0\tNA\tNA\tNA\tNA\tNA\tNA\n")
    summary = {
        "n_motifs": len(motifs),
        "n_detectors": model.num_motifs,
        "n_sequences": len(records),
        "n_matched": sum(r["q_value"] < 0.05 for r in matches),
        "best_matches": sorted(matches, key=lambda r: r["p_value"])[:5],
    }
    write_json(out / "summary.json", summary)
    return summary
