"""DNA sequence readers: FASTA, DeepBind tables, BED + reference.

Readers return :class:`SequenceSet` objects: the records that were kept plus a list of the
records that were skipped and why (empty, shorter than the motif length), so a caller can
report every skip; nothing is dropped silently. Problems that make a file unusable (missing or
empty file, a character that is not DNA, duplicate IDs, a bad label) raise
:class:`~biocnn.errors.InputError` naming the file, the record and the position. Encoding is
:mod:`biocnn.io.dna` (its functions are also importable from here).
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from biocnn.errors import InputError
from biocnn.io.dna import ALPHABET, AMBIGUOUS, codes, one_hot, one_hot_batch, reverse_complement  # noqa: F401
from biocnn.io.textfiles import open_binary, open_text  # noqa: F401


@dataclass
class SequenceRecord:
    """One sequence: its ID, bases and (optional) label."""

    id: str
    seq: str
    label: float | None = None


@dataclass
class SequenceSet:
    """Records read from one source, and the ones skipped with the reason for each."""

    source: str
    records: list[SequenceRecord] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)

    @property
    def ids(self) -> list[str]:
        return [r.id for r in self.records]

    @property
    def seqs(self) -> list[str]:
        return [r.seq for r in self.records]

    def labels(self) -> np.ndarray:
        """Labels as float32; raises when a record has none."""
        missing = [r.id for r in self.records if r.label is None]
        if missing:
            raise InputError(
                self.source,
                f"{len(missing)} records have no label (first: {missing[0]}); "
                "give labels in the header ('label=1') or a --labels TSV",
            )
        return np.array([r.label for r in self.records], dtype=np.float32)

    def skip_summary(self) -> str:
        """One line describing the skipped records ('' when none)."""
        if not self.skipped:
            return ""
        shown = ", ".join(f"{rid} ({why})" for rid, why in self.skipped[:5])
        more = f" and {len(self.skipped) - 5} more" if len(self.skipped) > 5 else ""
        return f"{self.source}: skipped {len(self.skipped)} records: {shown}{more}"


def _keep(out: SequenceSet, seen: set[str], record: SequenceRecord, min_len: int) -> None:
    """Validate one record, then keep it or list it as skipped."""
    if record.id in seen:
        raise InputError(out.source, f"duplicate record ID {record.id!r}")
    seen.add(record.id)
    if not record.seq:
        out.skipped.append((record.id, "empty"))
        return
    codes(record.seq, record.id, out.source)  # raises on a non-DNA character
    if len(record.seq) < min_len:
        out.skipped.append((record.id, f"{len(record.seq)} bp < motif_len {min_len}"))
        return
    out.records.append(record)


def _parse_label(value: str, record: str, source: str | Path) -> float:
    try:
        label = float(value)
    except ValueError:
        raise InputError(source, f"record {record!r}: label {value!r} is not a number") from None
    if not np.isfinite(label):
        raise InputError(source, f"record {record!r}: label {value!r} is not finite")
    return label


def read_labels_tsv(path: str | Path) -> dict[str, float]:
    """A side table of labels: tab-separated ``id<TAB>label`` (a header line is allowed)."""
    labels: dict[str, float] = {}
    with open_text(path) as fh:
        for lineno, line in enumerate(fh, 1):
            parts = line.rstrip("\r\n").split("\t")
            if not line.strip() or line.startswith("#"):
                continue
            if len(parts) < 2:
                raise InputError(path, f"line {lineno}: expected 'id<TAB>label'")
            if lineno == 1 and parts[1].lower() in ("label", "bound", "y"):
                continue
            if parts[0] in labels:
                raise InputError(path, f"line {lineno}: duplicate ID {parts[0]!r}")
            labels[parts[0]] = _parse_label(parts[1], parts[0], path)
    return labels


def _header_label(description: str, record: str, source: str | Path) -> float | None:
    for token in description.split()[1:]:
        if token.lower().startswith("label="):
            return _parse_label(token.split("=", 1)[1], record, source)
    return None


def read_fasta(path: str | Path, labels: str | Path | dict[str, float] | None = None, min_len: int = 1) -> SequenceSet:
    """Read a FASTA file (plain or gzip) with Biopython.

    Labels come from a ``label=<value>`` token in the header or from ``labels`` (a TSV path or
    a mapping); records without a label keep ``None``. Empty records and records shorter than
    ``min_len`` are skipped and listed; duplicate IDs and non-DNA characters are errors.
    """
    from Bio import SeqIO

    table = read_labels_tsv(labels) if isinstance(labels, (str, Path)) else labels
    out = SequenceSet(str(path))
    seen: set[str] = set()
    with open_text(path) as fh:
        first = fh.read(1)
        if not first:
            raise InputError(path, "file is empty")
        if first != ">":
            raise InputError(path, "not a FASTA file (the first character should be '>')")
        fh.seek(0)
        for rec in SeqIO.parse(fh, "fasta"):
            label = _header_label(rec.description, rec.id, path)
            if table is not None:
                if rec.id in table:
                    label = table[rec.id]
            _keep(out, seen, SequenceRecord(rec.id, str(rec.seq), label), min_len)
    if table is not None:
        unknown = sorted(set(table) - seen)
        if unknown:
            raise InputError(
                labels if isinstance(labels, (str, Path)) else path,
                f"{len(unknown)} labelled IDs are not in {path} (first: {unknown[0]})",
            )
    if not out.records and not out.skipped:
        raise InputError(path, "no FASTA records found")
    return out


def iter_fasta(path: str | Path) -> Iterator[tuple[str, str]]:
    """Stream ``(id, sequence)`` pairs without holding the whole file (for scans)."""
    from Bio.SeqIO.FastaIO import SimpleFastaParser

    with open_text(path) as fh:
        n = 0
        for title, seq in SimpleFastaParser(fh):
            n += 1
            yield title.split()[0] if title.split() else f"record{n}", seq
        if n == 0:
            raise InputError(path, "no FASTA records found")


DEEPBIND_COLUMNS = ("FoldID", "EventID", "seq", "Bound")


def read_deepbind_table(path: str | Path, min_len: int = 1) -> SequenceSet:
    """Read a DeepBind table: (gzip'd) TSV with header ``FoldID EventID seq Bound``."""
    out = SequenceSet(str(path))
    seen: set[str] = set()
    with open_text(path) as fh:
        reader = csv.reader(fh, delimiter="\t")
        header = next(reader, None)
        if header is None:
            raise InputError(path, "file is empty")
        missing = [c for c in ("EventID", "seq", "Bound") if c not in header]
        if missing:
            raise InputError(
                path,
                f"header lacks column(s) {', '.join(missing)} "
                f"(expected {' '.join(DEEPBIND_COLUMNS)}); got {' '.join(header)}",
            )
        i_id, i_seq, i_lab = header.index("EventID"), header.index("seq"), header.index("Bound")
        for lineno, row in enumerate(reader, 2):
            if not row:
                continue
            if len(row) != len(header):
                raise InputError(path, f"line {lineno}: {len(row)} columns, header has {len(header)}")
            rid = row[i_id]
            _keep(out, seen, SequenceRecord(rid, row[i_seq], _parse_label(row[i_lab], rid, path)), min_len)
    if not out.records and not out.skipped:
        raise InputError(path, "no sequences after the header")
    return out


def read_bed(path: str | Path) -> list[tuple[str, int, int, str]]:
    """BED intervals as ``(chrom, start, end, name)``; name defaults to ``chrom:start-end``."""
    intervals = []
    with open_text(path) as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip() or line.startswith(("#", "track", "browser")):
                continue
            parts = line.rstrip("\r\n").split("\t")
            if len(parts) < 3:
                raise InputError(path, f"line {lineno}: a BED line needs chrom, start and end")
            try:
                start, end = int(parts[1]), int(parts[2])
            except ValueError:
                raise InputError(path, f"line {lineno}: start/end are not integers") from None
            if start < 0 or end <= start:
                raise InputError(path, f"line {lineno}: bad interval {start}-{end}")
            name = parts[3] if len(parts) > 3 and parts[3] not in ("", ".") else f"{parts[0]}:{start}-{end}"
            intervals.append((parts[0], start, end, name))
    if not intervals:
        raise InputError(path, "no BED intervals found")
    return intervals


def read_bed_sequences(
    bed: str | Path, reference: str | Path, min_len: int = 1, labels: str | Path | None = None
) -> SequenceSet:
    """Pull the sequences of BED intervals from an indexed reference FASTA (pyfaidx)."""
    from pyfaidx import Fasta, FetchError

    table = read_labels_tsv(labels) if labels else {}
    out = SequenceSet(str(bed))
    seen: set[str] = set()
    try:
        ref = Fasta(str(reference), as_raw=True, sequence_always_upper=False)
    except (OSError, ValueError, FetchError) as exc:
        raise InputError(reference, f"cannot index the reference FASTA: {exc}") from None
    with ref:
        for chrom, start, end, name in read_bed(bed):
            if chrom not in ref:
                raise InputError(bed, f"interval {name!r}: chromosome {chrom!r} is not in {reference}")
            if end > len(ref[chrom]):
                raise InputError(bed, f"interval {name!r}: end {end} is past the end of {chrom} ({len(ref[chrom])} bp)")
            _keep(out, seen, SequenceRecord(name, str(ref[chrom][start:end]), table.get(name)), min_len)
    return out


def read_sequences(
    path: str | Path, labels: str | Path | None = None, reference: str | Path | None = None, min_len: int = 1
) -> SequenceSet:
    """Read any supported input, chosen by its name.

    ``*.bed`` (needs ``reference``), ``*.fa``/``*.fasta``/``*.fna`` (optionally ``.gz``) and
    DeepBind tables (anything else: ``*.seq.gz``, ``*.tsv``).
    """
    path = Path(path)
    name = path.name.lower().removesuffix(".gz")
    if name.endswith(".bed"):
        if reference is None:
            raise InputError(path, "a BED file needs a reference FASTA (--reference)")
        return read_bed_sequences(path, reference, min_len, labels)
    if name.endswith((".fa", ".fasta", ".fna", ".fas")):
        return read_fasta(path, labels, min_len)
    return read_deepbind_table(path, min_len)
