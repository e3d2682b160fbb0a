"""Variant effects: score change of VCF variants (SNVs and short indels) on both strands.

For each ALT allele the model scores the reference window (``flank`` bp either side of the
REF allele, taken from the indexed reference FASTA) and the same window with REF replaced by
ALT. Reported: the both-strand score (max over strands, what the model outputs) for REF and
ALT, its change, and the change on each strand separately. A REF allele that disagrees with
the reference FASTA is reported in that variant's row (status ``ref_mismatch``; the window
still uses the reference bases, the ALT allele replaces ``len(REF)`` of them); a variant that
cannot be scored at all (unknown chromosome, symbolic allele, too close to an end) gets a row
with status ``failed`` and the reason. Every VCF record therefore gets one row per ALT.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from biocnn.deepbind.model import DeepBind, reverse_complement_onehot
from biocnn.errors import InputError
from biocnn.io.atomic import atomic_open
from biocnn.io.dna import CODES, one_hot_batch
from biocnn.io.textfiles import open_text
from biocnn.predict import eval_mode

log = logging.getLogger(__name__)

MAX_INDEL = 50
BLOCK = 4096  # VCF records scored together
COLUMNS = (
    "chrom",
    "pos",
    "id",
    "ref",
    "alt",
    "ref_score",
    "alt_score",
    "delta",
    "delta_forward",
    "delta_reverse",
    "status",
    "note",
)


def read_vcf(path: str | Path) -> Iterator[tuple[int, str, int, str, str, list[str]]]:
    """Yield ``(line number, chrom, pos (1-based), id, ref, alts)`` from a plain or gzip'd VCF."""
    n = 0
    with open_text(path) as fh:
        for lineno, line in enumerate(fh, 1):
            if line.startswith("#") or not line.strip():
                continue
            parts = line.rstrip("\r\n").split("\t")
            if len(parts) < 5:
                raise InputError(path, f"line {lineno}: a VCF record needs CHROM POS ID REF ALT")
            try:
                pos = int(parts[1])
            except ValueError:
                raise InputError(path, f"line {lineno}: POS {parts[1]!r} is not an integer") from None
            n += 1
            yield lineno, parts[0], pos, parts[2], parts[3], parts[4].split(",")
    if n == 0:
        raise InputError(path, "no variant records")


def _check_allele(allele: str) -> str | None:
    if allele.startswith("<") or "[" in allele or "]" in allele or allele in (".", "*"):
        return f"symbolic or missing allele {allele!r} is not supported"
    if (CODES[np.frombuffer(allele.encode("ascii", "replace"), np.uint8)] == 255).any():
        return f"allele {allele!r} has non-DNA characters"
    return None


@torch.no_grad()
def strand_scores(model: DeepBind, seqs: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Forward- and reverse-strand scores of sequences (padded with 0.25 to a common length)."""
    return _strand_scores(model, torch.from_numpy(one_hot_batch(seqs)))


@torch.no_grad()
def _strand_scores(model: DeepBind, x: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    x = x.to(next(model.parameters()).device)
    with eval_mode(model):
        fwd = model.strand_scores(x).float().cpu().numpy()
        if not model.both_strands:
            return fwd, fwd
        return fwd, model.strand_scores(reverse_complement_onehot(x)).float().cpu().numpy()


def _blocks(items: Iterator, size: int) -> Iterator[list]:
    block = []
    for item in items:
        block.append(item)
        if len(block) == size:
            yield block
            block = []
    if block:
        yield block


def _windows(records: list, ref_fa, flank: int) -> tuple[list[dict], list[tuple[int, str, str]]]:
    """One row per (VCF record, ALT) of ``records`` and the (row, REF window, ALT window) to score."""
    rows, pending = [], []
    for _lineno, chrom, pos, vid, ref, alts in records:
        for alt in alts:
            row = {"chrom": chrom, "pos": pos, "id": vid, "ref": ref, "alt": alt, "status": "ok", "note": ""}
            rows.append(row)
            problem = _check_allele(ref) or _check_allele(alt)
            if problem is None and max(len(ref), len(alt)) > MAX_INDEL + 1:
                problem = f"alleles longer than {MAX_INDEL + 1} bp are not scored"
            if problem is None and chrom not in ref_fa:
                problem = f"chromosome {chrom!r} is not in the reference"
            if problem is None:
                start, end, length = pos - 1, pos - 1 + len(ref), len(ref_fa[chrom])
                if start < 0 or end > length:
                    problem = f"position {pos} is outside {chrom} (1 to {length})"
                elif start - flank < 0 or end + flank > length:
                    problem = f"within {flank} bp of the end of {chrom}"
            if problem is not None:
                row.update(status="failed", note=problem)
                continue
            left = str(ref_fa[chrom][start - flank : start])
            actual = str(ref_fa[chrom][start:end])
            right = str(ref_fa[chrom][end : end + flank])
            if actual != ref.upper():
                row.update(status="ref_mismatch", note=f"VCF REF {ref} but the reference has {actual}")
            pending.append((len(rows) - 1, left + actual + right, left + alt.upper() + right))
    return rows, pending


def _scores(model: DeepBind, batches: list[torch.Tensor], pending: list) -> dict[int, dict]:
    """Score columns of each pending row: REF / ALT windows one-hot in ``batches`` (REF, ALT interleaved)."""
    if not pending:
        return {}
    fwd, rev = zip(*(_strand_scores(model, x) for x in batches))
    fwd, rev = np.concatenate(fwd), np.concatenate(rev)
    out = {}
    for k, (i, _, _) in enumerate(pending):
        rf, af, rr, ar = fwd[2 * k], fwd[2 * k + 1], rev[2 * k], rev[2 * k + 1]
        ref_score, alt_score = max(rf, rr), max(af, ar)
        out[i] = {
            "ref_score": ref_score,
            "alt_score": alt_score,
            "delta": alt_score - ref_score,
            "delta_forward": af - rf,
            "delta_reverse": ar - rr,
        }
    return out


def run_variants(
    model_dir: str | Path | list[str | Path],
    vcf: str | Path,
    reference: str | Path,
    out: str | Path,
    flank: int | None = None,
) -> dict[str, int]:
    """The ``variants`` verb: one TSV row per (variant, ALT allele); returns counts by status.

    Several models (a list, or a folder of model directories such as an import's ``--out``)
    score the VCF in one pass: a long table with a ``model`` column after ``alt``, one row per
    (variant, ALT allele, model), the models in order within each variant; counts are over rows.
    The VCF is read and scored in blocks of :data:`BLOCK` records, so memory is flat in its length.
    """
    from pyfaidx import Fasta

    from biocnn.checkpoint import CONFIG, load_model
    from biocnn.deepbind.predict import model_dirs, model_name
    from biocnn.device import select_device
    from biocnn.io.paths import ensure_writable_dir

    ensure_writable_dir(Path(out).parent)  # before any long work
    device = select_device("auto")
    paths = [model_dir] if isinstance(model_dir, (str, Path)) else list(model_dir)
    many = len(paths) > 1 or not (Path(paths[0]) / CONFIG).is_file()
    models: list[tuple[str, DeepBind, int]] = []  # (name, model, flank)
    for d in model_dirs(paths):
        model, config = load_model(d, device, expect="deepbind")
        models.append(
            (model_name(d, config), model, flank if flank is not None else int(config.get("input_length", 100)) // 2)
        )
    flanks = sorted({f for _, _, f in models})
    columns = COLUMNS[:5] + ("model",) + COLUMNS[5:] if many else COLUMNS
    try:
        ref_fa = Fasta(str(reference), as_raw=True, sequence_always_upper=True)
    except Exception as exc:  # pyfaidx raises several types for unreadable FASTA files
        raise InputError(reference, f"cannot index the reference FASTA: {exc}") from None
    counts = {"scored": 0, "ref_mismatch": 0, "failed": 0, "models": len(models)}
    with ref_fa, atomic_open(out) as fh:
        fh.write("\t".join(columns) + "\n")
        for records in _blocks(read_vcf(vcf), BLOCK):
            windows, batches = {}, {}
            for f in flanks:
                rows, pending = windows[f] = _windows(records, ref_fa, f)
                seqs = [s for _, r, a in pending for s in (r, a)]
                batches[f] = [torch.from_numpy(one_hot_batch(seqs[i : i + 1024])) for i in range(0, len(seqs), 1024)]
                for row in rows:
                    if row["status"] == "failed":
                        log.warning(
                            "%s %s:%d %s>%s: %s", vcf, row["chrom"], row["pos"], row["ref"], row["alt"], row["note"]
                        )
            scores = [_scores(model, batches[f], windows[f][1]) for _, model, f in models]
            for i in range(len(windows[flanks[0]][0])):
                for (name, _, f), by_row in zip(models, scores):
                    row = {**windows[f][0][i], **by_row.get(i, {}), "model": name}
                    fh.write("\t".join(_fmt(row.get(c, "NA")) for c in columns) + "\n")
                    counts["scored"] += row["status"] != "failed"
                    counts["ref_mismatch"] += row["status"] == "ref_mismatch"
                    counts["failed"] += row["status"] == "failed"
    return counts


def _fmt(value) -> str:
    if isinstance(value, (float, np.floating)):
        return f"{value:.5f}"
    return str(value)
