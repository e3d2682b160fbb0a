"""Mutation maps (in-silico mutagenesis) in DeepBind's style.

For a sequence of length L, every position is set to every base: the 4 x L mutants (the
reference base included, whose change is 0) are scored in one batched forward pass. The map
is ``score(mutant) - score(reference)``. The figure shows the sequence on top with letter
heights proportional to each position's importance (the largest score *loss* any substitution
there causes, as in DeepBind), and the 4 x L substitution heatmap below it.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from biocnn.deepbind.model import DeepBind
from biocnn.io.atomic import atomic_open, atomic_path, write_json
from biocnn.io.paths import safe_component
from biocnn.io.sequences import ALPHABET, one_hot, read_fasta
from biocnn.predict import eval_mode

log = logging.getLogger(__name__)

MAX_LENGTH = 5000  # 4 x L mutants of length L per pass: 5 kbp is 20000 x 4 x 5000 floats


@torch.no_grad()
def mutation_map(model: DeepBind, seq: str, record: str = "<sequence>") -> tuple[float, np.ndarray]:
    """(reference score, (4, L) score changes) from one batched pass over all 4 x L mutants."""
    x = torch.from_numpy(one_hot(seq, record))
    length = x.shape[1]
    mutants = x.repeat(4 * length, 1, 1)  # mutant b * L + i: position i set to base b
    idx = torch.arange(4 * length)
    base, pos = idx // length, idx % length
    mutants[idx, :, pos] = 0.0
    mutants[idx, base, pos] = 1.0
    device = next(model.parameters()).device
    with eval_mode(model):
        scores = model(torch.cat([x[None], mutants]).to(device)).float().cpu()
    ref = float(scores[0])
    return ref, (scores[1:].reshape(4, length) - ref).numpy()


def importance(delta: np.ndarray) -> np.ndarray:
    """Per-position importance: the largest loss of score from any substitution (>= 0)."""
    return np.maximum(0.0, -delta.min(axis=0))


def draw_mutation_map(path: str | Path, seq: str, delta: np.ndarray, title: str) -> None:
    """DeepBind-style figure: importance-scaled sequence above, substitution heatmap below."""
    import logomaker
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    length = len(seq)
    heights = np.zeros((length, 4))
    imp = importance(delta)
    for i, ch in enumerate(seq.upper()):
        if ch in ALPHABET:
            heights[i, ALPHABET.index(ch)] = imp[i]
    width = min(max(6.0, length * 0.12), 40.0)
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(width, 3.2), sharex=True, gridspec_kw={"height_ratios": [1, 1.2]})
    logomaker.Logo(pd.DataFrame(heights, columns=list(ALPHABET)), ax=top, color_scheme="classic")
    top.set_ylabel("importance")
    top.set_title(title, fontsize=9)
    limit = float(np.abs(delta).max()) or 1.0
    im = bottom.imshow(
        delta, aspect="auto", cmap="RdBu_r", vmin=-limit, vmax=limit, extent=(-0.5, length - 0.5, 3.5, -0.5)
    )
    bottom.set_yticks(range(4), list(ALPHABET))
    bottom.set_xlabel("position")
    fig.colorbar(im, ax=[top, bottom], fraction=0.02, pad=0.01, label="score change")
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png", bbox_inches="tight")
    plt.close(fig)


def write_matrix(path: str | Path, seq: str, delta: np.ndarray) -> None:
    """The raw map as TSV: one row per position (position, reference base, change to A/C/G/T)."""
    with atomic_open(path) as fh:
        fh.write("position\tref\tA\tC\tG\tT\n")
        for i, ch in enumerate(seq):
            fh.write(f"{i + 1}\t{ch}\t" + "\t".join(f"{v:.5f}" for v in delta[:, i]) + "\n")


def run_mutation_maps(
    model_dir: str | Path, fasta: str | Path, out_dir: str | Path, limit: int | None = None
) -> tuple[int, list[tuple[str, str]]]:
    """The ``mutation-map`` verb: ``<id>.png`` + ``<id>.tsv`` per sequence, ``summary.json``.

    Returns (maps written, failures); sequences seen = written + failures.
    """
    from biocnn.checkpoint import load_model
    from biocnn.device import select_device

    model, _ = load_model(model_dir, select_device("auto"), expect="deepbind")
    seqs = read_fasta(fasta, min_len=model.motif_len)
    failures = list(seqs.skipped)
    records = seqs.records[:limit] if limit else seqs.records
    out = Path(out_dir)
    summary = []
    for rec in records:  # record ids are unique (read_fasta checks), so are their file names
        if len(rec.seq) > MAX_LENGTH:
            failures.append((rec.id, f"{len(rec.seq)} bp is longer than {MAX_LENGTH} bp"))
            continue
        ref, delta = mutation_map(model, rec.seq, rec.id)
        name = safe_component(rec.id)  # a file name inside out_dir whatever the record id
        write_matrix(out / f"{name}.tsv", rec.seq, delta)
        draw_mutation_map(out / f"{name}.png", rec.seq, delta, f"{rec.id}  score {ref:.3f}")
        imp = importance(delta)
        summary.append(
            {
                "id": rec.id,
                "score": ref,
                "most_important_position": int(imp.argmax()) + 1,
                "max_loss": float(imp.max()),
                "max_gain": float(delta.max()),
            }
        )
    write_json(out / "summary.json", {"maps": summary, "failures": [{"id": i, "reason": r} for i, r in failures]})
    return len(summary), failures
