"""From sequence files to labelled one-hot tensors (with shuffled negatives when needed)."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch

from biocnn.deepbind.shuffle import shuffled_negatives
from biocnn.errors import InputError
from biocnn.io.sequences import SequenceSet, one_hot_batch, read_sequences

log = logging.getLogger(__name__)


@dataclass
class LabelledSequences:
    """Sequences with 0/1 labels, ready to encode."""

    ids: list[str]
    seqs: list[str]
    labels: np.ndarray
    source: str

    def __len__(self) -> int:
        return len(self.seqs)

    def subset(self, index: np.ndarray) -> LabelledSequences:
        return LabelledSequences(
            [self.ids[i] for i in index], [self.seqs[i] for i in index], self.labels[index], self.source
        )

    def tensors(self, length: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """One-hot (n, 4, length) and labels (n,) as float32 tensors."""
        x = one_hot_batch(self.seqs, length, self.ids, self.source)
        return torch.from_numpy(x), torch.from_numpy(self.labels.astype(np.float32))


def read_set(path, motif_len: int, labels=None, reference=None) -> SequenceSet:
    """Read sequences, logging every record skipped (empty or shorter than the motif)."""
    seqs = read_sequences(path, labels=labels, reference=reference, min_len=motif_len)
    if seqs.skipped:
        log.warning(seqs.skip_summary())
    if not seqs.records:
        raise InputError(path, f"no usable sequences ({len(seqs.skipped)} skipped)")
    return seqs


def labelled(
    seqs: SequenceSet, negatives_per_positive: int, seed: int, max_positives: int | None = None
) -> LabelledSequences:
    """Labels of ``seqs``; when all are positive (or unlabelled), add dinucleotide shuffles as negatives.

    ``max_positives`` subsamples the positives first (seeded) for quick runs.
    """
    records = seqs.records
    has_labels = all(r.label is not None for r in records)
    values = np.array([r.label for r in records], dtype=np.float32) if has_labels else np.ones(len(records), np.float32)
    if not np.isin(values, (0.0, 1.0)).all():
        raise InputError(seqs.source, "labels must be 0 or 1 for a binding classifier")
    rng = np.random.default_rng(seed)
    if max_positives is not None and len(records) > max_positives:
        keep = np.sort(rng.choice(len(records), max_positives, replace=False))
        records, values = [records[i] for i in keep], values[keep]
    ids, sequences = [r.id for r in records], [r.seq for r in records]
    if (values == 0).any():
        if not (values == 1).any():
            raise InputError(seqs.source, "there are no positive (label 1) sequences")
        return LabelledSequences(ids, sequences, values, seqs.source)
    negatives = shuffled_negatives(sequences, negatives_per_positive, seed)
    neg_ids = [f"{i}_shuf{k}" for i in ids for k in range(negatives_per_positive)]
    log.info("%s: %d positives, added %d dinucleotide-shuffled negatives", seqs.source, len(sequences), len(negatives))
    return LabelledSequences(
        ids + neg_ids,
        sequences + negatives,
        np.concatenate([values, np.zeros(len(negatives), np.float32)]),
        seqs.source,
    )


def split(data: LabelledSequences, fraction: float, seed: int) -> tuple[LabelledSequences, LabelledSequences]:
    """Stratified random split into (train, validation) with ``fraction`` held out."""
    rng = np.random.default_rng(seed)
    val = []
    for cls in (0.0, 1.0):
        idx = np.flatnonzero(data.labels == cls)
        rng.shuffle(idx)
        val.extend(idx[: max(1, int(round(len(idx) * fraction)))])
    val_idx = np.sort(np.array(val))
    train_idx = np.setdiff1d(np.arange(len(data)), val_idx)
    return data.subset(train_idx), data.subset(val_idx)


def stratified_folds(labels: np.ndarray, folds: int, seed: int) -> list[np.ndarray]:
    """Indices of ``folds`` stratified folds (for cross-validation)."""
    from sklearn.model_selection import StratifiedKFold

    skf = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    return [val for _, val in skf.split(np.zeros(len(labels)), labels)]
