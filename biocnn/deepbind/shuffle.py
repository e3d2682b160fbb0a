"""Dinucleotide-preserving shuffles (Altschul & Erickson 1985), DeepBind's negatives.

A sequence is a walk through the graph whose vertices are letters and whose edges are the
sequence's dinucleotides. Any Eulerian walk of that multigraph that starts at the same letter
is a shuffle with exactly the same dinucleotide counts. Altschul-Erickson draws one uniformly:
pick, for every letter except the last, a random "last exit" edge; keep the draw only if the
last exits form a tree rooted at the final letter (otherwise the walk could get stuck); shuffle
the remaining edges of every vertex; then walk, using each vertex's last exit last.
"""

from __future__ import annotations

import numpy as np


def _last_exits_reach(last: dict[str, str], root: str) -> bool:
    """True when following last-exit edges from every vertex reaches ``root``."""
    for start in last:
        seen, v = set(), start
        while v != root:
            if v in seen:
                return False
            seen.add(v)
            v = last[v]
    return True


def dinucleotide_shuffle(seq: str, rng: np.random.Generator) -> str:
    """One uniformly random sequence with the same first letter and dinucleotide counts."""
    if len(seq) <= 2:
        return seq
    edges: dict[str, list[str]] = {}
    for a, b in zip(seq, seq[1:]):
        edges.setdefault(a, []).append(b)
    root = seq[-1]
    while True:
        last = {v: out[rng.integers(len(out))] for v, out in edges.items() if v != root}
        if _last_exits_reach(last, root):
            break
    order: dict[str, list[str]] = {}
    for v, out in edges.items():
        rest = list(out)
        if v in last:
            rest.remove(last[v])
        rng.shuffle(rest)
        if v in last:
            rest.append(last[v])
        order[v] = rest
    pos = dict.fromkeys(order, 0)
    walk = [seq[0]]
    v = seq[0]
    for _ in range(len(seq) - 1):
        nxt = order[v][pos[v]]
        pos[v] += 1
        walk.append(nxt)
        v = nxt
    return "".join(walk)


def dinucleotide_counts(seq: str) -> dict[str, int]:
    """Counts of every dinucleotide in ``seq`` (for checks and tests)."""
    counts: dict[str, int] = {}
    for a, b in zip(seq, seq[1:]):
        counts[a + b] = counts.get(a + b, 0) + 1
    return counts


def shuffled_negatives(seqs: list[str], per_sequence: int, seed: int) -> list[str]:
    """``per_sequence`` dinucleotide shuffles of each sequence, reproducible from ``seed``.

    Letters are upper-cased first so soft-masked and unmasked copies of a dinucleotide count
    as one.
    """
    rng = np.random.default_rng(seed)
    return [dinucleotide_shuffle(s.upper(), rng) for s in seqs for _ in range(per_sequence)]
