"""Seeded demo data for DeepBind: real JASPAR motifs planted in random DNA.

Positives are random background sequences with one site sampled from a JASPAR position
frequency matrix (shipped by the ``pyjaspar`` package, no download) planted at a random
position and strand; negatives are dinucleotide shuffles of other positives, exactly the
negatives DeepBind uses. The demo genome is random background with sites planted at known
positions (written to a BED file), so a scan can be checked against the truth.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from biocnn.deepbind.shuffle import dinucleotide_shuffle
from biocnn.errors import InputError
from biocnn.io.atomic import atomic_open
from biocnn.io.sequences import reverse_complement

BASES = np.array(list("ACGT"))


def jaspar_pfm(motif: str) -> tuple[str, np.ndarray]:
    """A JASPAR motif's name and probability matrix (4, width), by matrix ID or TF name.

    A matrix ID without a version (``MA0139``) takes the latest version.
    """
    from pyjaspar import jaspardb

    db = jaspardb()
    if motif.upper().startswith(("MA", "UN", "PB", "PF", "PH", "CN", "PL", "POL")):
        found = db.fetch_motif_by_id(motif) if "." in motif else None
        if found is None:
            versions = [m for m in db.fetch_motifs(matrix_id=[motif], all_versions=True)] if "." not in motif else []
            found = versions[-1] if versions else None
    else:
        named = db.fetch_motifs_by_name(motif)
        found = named[0] if named else None
    if found is None:
        raise InputError("JASPAR", f"no motif {motif!r} in the pyjaspar database")
    counts = np.array([found.counts[b] for b in "ACGT"], dtype=np.float64)
    return found.name, counts / counts.sum(axis=0, keepdims=True)


def random_dna(n: int, rng: np.random.Generator, gc: float = 0.42) -> str:
    """``n`` random bases with the given GC content (human-like by default)."""
    p = np.array([(1 - gc) / 2, gc / 2, gc / 2, (1 - gc) / 2])
    return "".join(BASES[rng.choice(4, size=n, p=p)])


def sample_site(pfm: np.ndarray, rng: np.random.Generator) -> str:
    """One binding site drawn column by column from a probability matrix, random strand."""
    site = "".join(BASES[[rng.choice(4, p=col) for col in pfm.T]])
    return reverse_complement(site) if rng.random() < 0.5 else site


def plant(background: str, site: str, rng: np.random.Generator) -> str:
    """``background`` with ``site`` written over it at a random position."""
    pos = int(rng.integers(0, len(background) - len(site) + 1))
    return background[:pos] + site + background[pos + len(site) :]


def binding_sets(pfm: np.ndarray, n: int, length: int, rng: np.random.Generator) -> tuple[list[str], list[str]]:
    """``n`` positives (a planted site each) and ``n`` dinucleotide-shuffled negatives."""
    pos = [plant(random_dna(length, rng), sample_site(pfm, rng), rng) for _ in range(n)]
    neg = [dinucleotide_shuffle(s, rng) for s in pos]
    return pos, neg


def _write_table(path: Path, pos: list[str], neg: list[str], prefix: str) -> None:
    """A DeepBind table (gzip'd TSV with header FoldID EventID seq Bound)."""
    import gzip

    with atomic_open(path, "wb") as raw, gzip.GzipFile(filename="", fileobj=raw, mode="wb", mtime=0) as fh:
        # no file name and no time in the gzip header: same seed, same bytes (and data hash)
        fh.write(b"FoldID\tEventID\tseq\tBound\n")
        rows = [(f"{prefix}_{i:05d}_peak", s, 1) for i, s in enumerate(pos)]
        rows += [(f"{prefix}_{i:05d}_shuf", s, 0) for i, s in enumerate(neg)]
        for k, (rid, seq, label) in enumerate(rows):
            fh.write(f"{'ABC'[k % 3]}\t{rid}\t{seq}\t{label}\n".encode())


def write_demo_binding(
    out_dir: str | Path,
    seed: int = 0,
    n_train: int = 2000,
    n_test: int = 500,
    motif: str = "MA0139",
    length: int = 101,
    genome_bp: int = 200_000,
    sites_per_100kb: int = 20,
) -> dict[str, Path]:
    """Write the DeepBind demo: train/test tables, a FASTA of positives, a genome + its sites.

    Files: ``train.seq.gz`` (positives only, like ENCODE ``_AC`` sets), ``test.seq.gz``
    (positives + shuffled negatives, like ``_B``), ``examples.fa`` (a few positives for
    mutation maps), ``genome.fa`` with ``genome_sites.bed`` (planted sites), ``variants.vcf``
    (SNVs and indels on the genome, some over sites) and ``motif.txt`` (the JASPAR name).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    name, pfm = jaspar_pfm(motif)
    train_pos, _ = binding_sets(pfm, n_train, length, rng)
    test_pos, test_neg = binding_sets(pfm, n_test, length, rng)
    files = {
        "train": out / "train.seq.gz",
        "test": out / "test.seq.gz",
        "examples": out / "examples.fa",
        "genome": out / "genome.fa",
        "sites": out / "genome_sites.bed",
        "variants": out / "variants.vcf",
        "motif": out / "motif.txt",
    }
    _write_table(files["train"], train_pos, [], "train")
    _write_table(files["test"], test_pos, test_neg, "test")
    with atomic_open(files["examples"]) as fh:
        for i, s in enumerate(test_pos[:3]):
            fh.write(f">example{i + 1} label=1\n{s}\n")
    genome, sites = _genome(pfm, genome_bp, sites_per_100kb, rng)
    with atomic_open(files["genome"]) as fh:
        fh.write(">chrDemo\n")
        for i in range(0, len(genome), 60):
            fh.write(genome[i : i + 60] + "\n")
    with atomic_open(files["sites"]) as fh:
        for start, end, strand in sites:
            fh.write(f"chrDemo\t{start}\t{end}\tsite\t0\t{strand}\n")
    _write_vcf(files["variants"], genome, sites, rng)
    with atomic_open(files["motif"]) as fh:
        fh.write(f"{motif}\t{name}\n")
    return files


def _genome(
    pfm: np.ndarray, genome_bp: int, per_100kb: int, rng: np.random.Generator
) -> tuple[str, list[tuple[int, int, str]]]:
    """Random background with sites planted at evenly spread, jittered positions."""
    seq = list(random_dna(genome_bp, rng))
    n_sites = max(1, genome_bp * per_100kb // 100_000)
    width = pfm.shape[1]
    spacing = genome_bp // n_sites
    sites = []
    for k in range(n_sites):
        start = k * spacing + int(rng.integers(0, max(1, spacing - width)))
        site = "".join(BASES[[rng.choice(4, p=col) for col in pfm.T]])
        strand = "+"
        if rng.random() < 0.5:
            site, strand = reverse_complement(site), "-"
        seq[start : start + width] = list(site)
        sites.append((start, start + width, strand))
    return "".join(seq), sites


def _write_vcf(path: Path, genome: str, sites: list[tuple[int, int, str]], rng: np.random.Generator) -> None:
    """A VCF of SNVs inside planted sites (likely to lower the score), random SNVs and indels."""
    rows = []
    for start, end, _ in sites[:5]:
        pos = int(rng.integers(start, end))
        ref = genome[pos]
        alt = "ACGT"[("ACGT".index(ref) + 2) % 4]
        rows.append((pos + 1, ref, alt))
    for _ in range(5):
        pos = int(rng.integers(1000, len(genome) - 1000))
        rows.append((pos + 1, genome[pos], "ACGT"[("ACGT".index(genome[pos]) + 1) % 4]))
    pos = int(rng.integers(1000, len(genome) - 1000))
    rows.append((pos + 1, genome[pos], genome[pos] + "GA"))  # insertion
    pos = int(rng.integers(1000, len(genome) - 1000))
    rows.append((pos + 1, genome[pos : pos + 3], genome[pos]))  # deletion
    with atomic_open(path) as fh:
        fh.write(f"##fileformat=VCFv4.2\n##contig=<ID=chrDemo,length={len(genome)}>\n")
        fh.write("#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO\n")
        for i, (pos, ref, alt) in enumerate(sorted(rows)):
            fh.write(f"chrDemo\t{pos}\tvar{i + 1}\t{ref}\t{alt}\t.\tPASS\t.\n")
