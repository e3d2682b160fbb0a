"""DNA codes: bases to integer codes and one-hot columns, reverse complements.

Channels are A, C, G, T. ``N`` and the IUPAC ambiguity codes (R Y S W K M B D H V) become 0.25
in every channel, as DeepBind does; lowercase (soft-masked) bases are accepted. Any other
character is an :class:`~biocnn.errors.InputError` naming the record and the position.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np

from biocnn.errors import InputError

ALPHABET = "ACGT"
AMBIGUOUS = "NRYSWKMBDHV"
# Byte -> code: 0..3 for A, C, G, T; 4 for an ambiguity code; 255 for anything else.
CODES = np.full(256, 255, dtype=np.uint8)
for _i, _c in enumerate(ALPHABET):
    CODES[ord(_c)] = CODES[ord(_c.lower())] = _i
for _c in AMBIGUOUS:
    CODES[ord(_c)] = CODES[ord(_c.lower())] = 4
# Code -> one-hot column; code 4 (ambiguous) is 0.25 everywhere.
ONE_HOT = np.vstack([np.eye(4, dtype=np.float32), np.full((1, 4), 0.25, dtype=np.float32)])
_COMPLEMENT = str.maketrans("ACGTRYSWKMBDHVNacgtryswkmbdhvn", "TGCAYRSWMKVHDBNtgcayrswmkvhdbn")


def codes(seq: str, record: str = "<sequence>", source: str | Path = "<input>") -> np.ndarray:
    """Integer codes of ``seq`` (0-3 = ACGT, 4 = ambiguous); error on any other character."""
    try:
        raw = np.frombuffer(seq.encode("ascii"), dtype=np.uint8)
    except UnicodeEncodeError:
        raw = np.frombuffer(seq.encode("utf-8"), dtype=np.uint8)
    out = CODES[raw]
    bad = np.flatnonzero(out == 255)
    if bad.size:
        pos = int(bad[0])
        char = seq[pos] if pos < len(seq) else "?"
        raise InputError(
            source,
            f"record {record!r}: invalid character {char!r} at position {pos + 1} "
            f"(allowed: A C G T, IUPAC ambiguity codes {AMBIGUOUS}, any case)",
        )
    return out


def one_hot(seq: str, record: str = "<sequence>", source: str | Path = "<input>") -> np.ndarray:
    """One-hot encode ``seq`` as float32 of shape (4, len(seq)), channels A, C, G, T."""
    return ONE_HOT[codes(seq, record, source)].T.copy()


def one_hot_batch(
    seqs: Iterable[str], length: int | None = None, ids: Iterable[str] | None = None, source: str | Path = "<input>"
) -> np.ndarray:
    """Encode sequences into one (n, 4, length) float32 array.

    Sequences shorter than ``length`` (default: the longest) are filled on the right with
    0.25, the same neutral value DeepBind pads with, so a max-pooling model scores them as it
    would score the unpadded sequence.
    """
    seqs = list(seqs)
    names = list(ids) if ids is not None else [f"#{i + 1}" for i in range(len(seqs))]
    length = length if length is not None else max((len(s) for s in seqs), default=0)
    out = np.full((len(seqs), 4, length), 0.25, dtype=np.float32)
    for i, (seq, name) in enumerate(zip(seqs, names)):
        if len(seq) > length:
            raise InputError(source, f"record {name!r} is {len(seq)} bp, longer than {length}")
        out[i, :, : len(seq)] = ONE_HOT[codes(seq, name, source)].T
    return out


def reverse_complement(seq: str) -> str:
    """Reverse complement, keeping case and mapping IUPAC codes to their complements."""
    return seq.translate(_COMPLEMENT)[::-1]
