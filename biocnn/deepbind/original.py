"""The original DeepBind tool's scoring rule (v0.11), for one model or many at once.

A sequence of ``n`` bases is cut into every ``W``-base window at stride 1 (``W = int(1.5 m)``
for detectors of width ``m``, or a given window size); a sequence of ``n <= W`` bases is one
window. Each window is padded with ``m - 1`` N's (0.25 of every base) on its own and scored by
the model; the sequence's score is the largest window score, or with ``average`` the sum of
the window scores divided by ``n``. A model that scores both strands scores the reverse
complement the same way and keeps the larger of the two strand scores. ``window_size=None``
with ``rule="whole"`` scores each sequence as one window (biocnn's own rule, without the
right-filling of a padded batch).

Scores are computed in float64 from the model's float32 weights, so they reproduce the
original tool's float32 output to its printed precision. Models sharing a detector width, a
pooling and a hidden width are stacked into one matrix product over all windows.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from biocnn.io.dna import codes as dna_codes

RULES = ("original", "whole")
_RNA = str.maketrans("Uu", "Tt")
# Code -> one-hot column (code 4: N and the IUPAC codes, 0.25 of every base).
_ONE_HOT = np.vstack([np.eye(4), np.full((1, 4), 0.25)])
_COMPLEMENT_CODE = np.array([3, 2, 1, 0, 4], dtype=np.uint8)
_BLOCK = 1 << 23  # float64 entries of one activation block (64 MiB)
SLIDING_COLUMNS = 32  # stacks up to this many detector columns score windows with shared interiors


def default_scoring() -> dict[str, Any]:
    """The ``config.json`` ``scoring`` entry of an imported model: the original rule, the model's window."""
    return {"rule": "original", "window_size": None, "average": False}


def window_size(motif_len: int, window: int | None = None) -> int:
    """The tool's window length: ``window`` when given, else ``int(1.5 * motif_len)``."""
    return int(window) if window is not None else int(1.5 * motif_len)


def encode(seq: str, record: str = "<sequence>", source: str = "<input>") -> np.ndarray:
    """Integer codes of a DNA or RNA sequence (0-3 = A C G T/U, 4 = N or an IUPAC code)."""
    return dna_codes(seq.translate(_RNA), record, source)


@dataclass
class Scoring:
    """How sequences are scored: ``rule`` ``"original"`` (windows) or ``"whole"``; ``window_size``
    (original rule; ``None``: ``int(1.5 m)``); ``average`` (original rule: sum / n instead of max)."""

    rule: str = "original"
    window_size: int | None = None
    average: bool = False

    def __post_init__(self) -> None:
        if self.rule not in RULES:
            raise ValueError(f"scoring rule must be one of {', '.join(RULES)}, got {self.rule!r}")
        if self.window_size is not None and self.window_size < 1:
            raise ValueError(f"window size must be positive, got {self.window_size}")

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Scoring:
        """The ``scoring`` entry of a model's ``config.json``; biocnn's own models (no entry): whole."""
        entry = config.get("scoring") or {"rule": "whole"}
        return cls(
            rule=entry.get("rule", "whole"),
            window_size=entry.get("window_size"),
            average=bool(entry.get("average", False)),
        )

    def window(self, motif_len: int) -> int | None:
        """Window length for a model of this detector width (``None``: the whole sequence)."""
        return window_size(motif_len, self.window_size) if self.rule == "original" else None


# ----------------------------------------------------------------------------- stacked models
@dataclass
class _Stack:
    """Models of one detector width, pooling and hidden width, stacked as float64 arrays.

    ``table[j, c]`` is what base code ``c`` (4 = N) adds to every detector at detector offset
    ``j``; columns are ``g * d + k`` for model ``g``, detector ``k``.
    """

    motif_len: int
    num_motifs: int
    maxavg: bool
    table: torch.Tensor  # (m, 5, G * d)
    bias: torch.Tensor  # (G * d,)
    w1: torch.Tensor  # (G, features, outputs1); features [avg.., max..] as the model pools them
    b1: torch.Tensor  # (G, outputs1)
    w2: torch.Tensor | None  # (G, hidden)
    b2: torch.Tensor | None  # (G,)

    @classmethod
    def build(cls, models: Sequence[torch.nn.Module]) -> _Stack:
        first = models[0]
        m, d = first.motif_len, first.num_motifs
        kernels, bias, w1, b1, w2, b2 = [], [], [], [], [], []
        for model in models:
            conv = model.motif_conv
            kernels.append(conv.weight.detach().double().permute(2, 1, 0))  # (m, 4, d)
            bias.append(conv.bias.detach().double())
            linears = [layer for layer in model.head.mlp if isinstance(layer, torch.nn.Linear)]
            w1.append(linears[0].weight.detach().double().T)
            b1.append(linears[0].bias.detach().double())
            if len(linears) > 1:
                w2.append(linears[1].weight.detach().double()[0])
                b2.append(linears[1].bias.detach().double()[0])
        bases = torch.cat(kernels, 2)  # (m, 4, G * d)
        table = torch.cat([bases, 0.25 * bases.sum(1, keepdim=True)], 1)
        return cls(
            m,
            d,
            first.head.pool == "maxavg",
            table,
            torch.cat(bias),
            torch.stack(w1),
            torch.stack(b1),
            torch.stack(w2) if w2 else None,
            torch.stack(b2) if b2 else None,
        )

    @property
    def columns(self) -> int:
        return self.table.shape[2]

    def window_scores(self, window_codes: np.ndarray) -> np.ndarray:
        """Scores (k, G) of windows given as codes (k, L), each padded with m - 1 N's on its own."""
        m = self.motif_len
        k, length = window_codes.shape
        positions = length + m - 1
        padded = np.full((k, length + 2 * (m - 1)), 4, dtype=np.int64)
        padded[:, m - 1 : m - 1 + length] = window_codes
        kernels = self.table[:, :4].reshape(m * 4, -1)
        onehot = torch.from_numpy(_ONE_HOT[padded])  # (k, L + 2m - 2, 4)
        out = []
        step = max(1, _BLOCK // (positions * max(self.columns, 4 * m)))
        for start in range(0, k, step):
            x = onehot[start : start + step]
            cols = x.unfold(1, m, 1).transpose(2, 3).reshape(-1, m * 4)  # (rows * positions, m * 4)
            act = torch.addmm(self.bias, cols, kernels).relu_().view(len(x), positions, -1)
            out.append(self._head(act.amax(1), act.sum(1) / positions if self.maxavg else None))
        return torch.cat(out).numpy()

    def sliding_scores(self, seqs: Sequence[np.ndarray], window: int) -> np.ndarray:
        """Scores (windows, G) of every ``window``-base window of each sequence (len > window >= m), in order.

        A detector position inside a window sees the same bases as in the whole sequence, so
        those activations are computed once per sequence. The m - 1 positions at each end of a
        window see N in place of the bases beyond it; their sums are diagonal partial sums of
        the per-base contributions, computed once per sequence position for every clip:
        ``head[r, p]`` adds offsets r..m-1 starting at base p (a window starting at p, r offsets
        clipped), ``tail[t, p]`` adds offsets 0..t ending at base p (a window ending at p).
        """
        m = self.motif_len
        stream = np.concatenate(seqs).astype(np.int64)
        bounds = np.cumsum([0] + [len(s) for s in seqs])
        starts = torch.from_numpy(
            np.concatenate([b + np.arange(len(s) - window + 1) for b, s in zip(bounds[:-1], seqs)])
        )
        n_pos = len(stream)
        index = torch.from_numpy(stream[None, :] + 5 * np.arange(m)[:, None])  # (m, positions)
        head = torch.nn.functional.embedding(index, self.table.reshape(m * 5, -1))  # [j, p]: base p at offset j
        tail = head.clone()
        for r in range(m - 2, -1, -1):
            head[r, :-1] += head[r + 1, 1:]
        for t in range(1, m):
            tail[t, 1:] += tail[t - 1, :-1]
        n_col = self.table[:, 4]  # (m, D): what an N adds at each offset
        zero = torch.zeros(1, self.columns, dtype=torch.float64)
        n_before = torch.cat([zero, n_col.cumsum(0)]) + self.bias  # [r]: N at offsets < r, + bias
        n_after = torch.cat([zero, n_col.flip(0).cumsum(0)]) + self.bias  # [r]: N at the last r offsets
        # Interior: footprints starting at p with all m offsets on bases (valid while p <= n_pos - m).
        inner = window - m + 1
        span = n_pos - m + 1 - inner + 1
        act = (head[0, : n_pos - m + 1] + self.bias).relu_()
        best = act[:span].clone()
        total = best.clone() if self.maxavg else None
        for t in range(1, inner):
            torch.maximum(best, act[t : t + span], out=best)
            if total is not None:
                total += act[t : t + span]
        # Clipped ends: window start s, r = 1..m-1 offsets on N; window end e, m-1-t offsets on N.
        left = head[1:].add_(n_before[1:m, None]).relu_()
        right = tail[: m - 1].add_(n_after.flip(0)[1:m, None]).relu_()
        ends = starts + window - 1
        best = torch.maximum(best.index_select(0, starts), left.amax(0).index_select(0, starts))
        best = torch.maximum(best, right.amax(0).index_select(0, ends))
        if total is not None:
            total = (
                total.index_select(0, starts) + left.sum(0).index_select(0, starts) + right.sum(0).index_select(0, ends)
            ) / (window + m - 1)
        return self._head(best, total).numpy()

    def _head(self, best: torch.Tensor, mean: torch.Tensor | None) -> torch.Tensor:
        """Pooled (rows, G * d) maxima (and means) -> scores (rows, G)."""
        rows = len(best)
        pooled = best.view(rows, -1, self.num_motifs)
        if mean is not None:
            pooled = torch.cat([mean.view(rows, -1, self.num_motifs), pooled], dim=-1)
        h = torch.einsum("rgf,gfo->rgo", pooled, self.w1) + self.b1
        if self.w2 is None:
            return h[..., 0]
        return torch.einsum("rgo,go->rg", h.relu_(), self.w2) + self.b2


def reverse_complement_codes(c: np.ndarray) -> np.ndarray:
    """Reverse complement of a code array."""
    return _COMPLEMENT_CODE[c[::-1]]


def _strand_scores(stack: _Stack, seq_codes: Sequence[np.ndarray], window: int | None, average: bool) -> np.ndarray:
    """Per-sequence scores (n, G) of one strand: max over windows, or their sum / n."""
    out = np.empty((len(seq_codes), stack.w1.shape[0]))
    lengths = np.array([len(c) for c in seq_codes])
    many = np.flatnonzero(lengths > window) if window is not None else np.zeros(0, np.int64)
    # One window: the sequence itself, scored with the others of its length.
    by_length: dict[int, list[int]] = {}
    for i in np.setdiff1d(np.arange(len(seq_codes)), many):
        by_length.setdefault(int(lengths[i]), []).append(int(i))
    for members in by_length.values():
        out[members] = stack.window_scores(np.stack([seq_codes[i] for i in members]))
    if not len(many):
        return out
    # Many windows: batches of sequences whose windows (or partial sums) fit in one block.
    # The shared-interior path saves the most for few models; a wide stack is faster as one matrix product.
    sliding = window >= stack.motif_len and stack.columns <= SLIDING_COLUMNS
    per_base = stack.motif_len * stack.columns if sliding else (window + stack.motif_len) * stack.columns
    budget = max(1, _BLOCK // per_base)
    batch: list[int] = []
    for i in list(many) + [None]:
        if i is not None and (not batch or (lengths[batch] - window + 1).sum() + lengths[i] <= budget):
            batch.append(int(i))
            continue
        seqs = [seq_codes[j] for j in batch]
        if sliding:
            scores = stack.sliding_scores(seqs, window)
        else:
            scores = stack.window_scores(
                np.concatenate([np.lib.stride_tricks.sliding_window_view(c, window) for c in seqs])
            )
        counts = lengths[batch] - window + 1
        firsts = np.r_[0, np.cumsum(counts)[:-1]]
        if average:
            out[batch] = np.add.reduceat(scores, firsts, axis=0) / lengths[batch, None]
        else:
            out[batch] = np.maximum.reduceat(scores, firsts, axis=0)
        batch = [int(i)] if i is not None else []
    return out


def score_models(
    models: Sequence[torch.nn.Module],
    seq_codes: Sequence[np.ndarray],
    scorings: Sequence[Scoring] | Scoring,
    max_stack: int = 64,
) -> np.ndarray:
    """Scores (sequences, models) of encoded sequences (see :func:`encode`) under each model's rule.

    Args:
        models: :class:`~biocnn.deepbind.model.DeepBind` models.
        seq_codes: one code array per sequence (length >= 1).
        scorings: one :class:`Scoring` per model, or one for all.
        max_stack: models scored together in one stacked pass.
    """
    if isinstance(scorings, Scoring):
        scorings = [scorings] * len(models)
    if len(scorings) != len(models):
        raise ValueError(f"{len(models)} models but {len(scorings)} scoring rules")
    if any(len(c) == 0 for c in seq_codes):
        raise ValueError("cannot score an empty sequence")
    out = np.full((len(seq_codes), len(models)), np.nan)
    groups: dict[tuple, list[int]] = {}
    for i, (model, scoring) in enumerate(zip(models, scorings)):
        linears = [layer for layer in model.head.mlp if isinstance(layer, torch.nn.Linear)]
        key = (
            model.motif_len,
            model.num_motifs,
            model.head.pool,
            linears[0].out_features,
            len(linears),
            scoring.window(model.motif_len),
            scoring.average,
            model.both_strands,
        )
        groups.setdefault(key, []).append(i)
    rc_codes = None
    with torch.no_grad():
        for (*_, window, average, both), members in groups.items():
            if both and rc_codes is None:
                rc_codes = [reverse_complement_codes(c) for c in seq_codes]
            for start in range(0, len(members), max_stack):
                chunk = members[start : start + max_stack]
                stack = _Stack.build([models[i] for i in chunk])
                scores = _strand_scores(stack, seq_codes, window, average)
                if both:
                    scores = np.maximum(scores, _strand_scores(stack, rc_codes, window, average))
                out[:, chunk] = scores
    return out


def evaluate_rule(model: torch.nn.Module, data, scoring: Scoring) -> dict[str, Any]:
    """Held-out metrics (as :func:`biocnn.deepbind.train.evaluate_model`) with scores from ``scoring``'s rule.

    ``data``: :class:`~biocnn.deepbind.data.LabelledSequences`.
    """
    from dataclasses import asdict

    from biocnn.deepbind.train import auc_metrics

    codes = [encode(seq, rid, data.source) for rid, seq in zip(data.ids, data.seqs)]
    scores = score_models([model], codes, scoring)[:, 0]
    labels = np.asarray(data.labels)
    return {
        **auc_metrics(labels, scores),
        "n": len(data),
        "n_positive": int((labels == 1).sum()),
        "n_negative": int((labels == 0).sum()),
        "test": data.source,
        "scoring": asdict(scoring),
    }
