"""DeepBind inputs: one-hot encoding, FASTA / table / BED readers, dinucleotide shuffles."""

import gzip
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from biocnn.deepbind.data import labelled
from biocnn.deepbind.shuffle import dinucleotide_counts, dinucleotide_shuffle, shuffled_negatives
from biocnn.errors import InputError
from biocnn.io.dna import one_hot, one_hot_batch, reverse_complement
from biocnn.io.sequences import iter_fasta, read_bed_sequences, read_deepbind_table, read_fasta, read_sequences

ENCODE = Path(__file__).resolve().parents[2] / "shared" / "data" / "encode"


def test_one_hot_channels_ambiguity_and_lowercase():
    x = one_hot("ACGTNacgtR")
    assert x.shape == (4, 10)
    np.testing.assert_array_equal(x[:, :4], np.eye(4))
    np.testing.assert_array_equal(x[:, 5:9], np.eye(4))  # lowercase = uppercase
    np.testing.assert_array_equal(x[:, 4], [0.25] * 4)  # N
    np.testing.assert_array_equal(x[:, 9], [0.25] * 4)  # IUPAC R


def test_invalid_character_names_record_and_position():
    with pytest.raises(InputError, match=r"record 'seq7'.*'X' at position 3"):
        one_hot("ACXT", "seq7", "in.fa")


def test_one_hot_batch_fills_short_sequences_with_quarter():
    x = one_hot_batch(["ACGT", "AC"], 5)
    assert x.shape == (2, 4, 5)
    np.testing.assert_array_equal(x[1, :, 2:], 0.25)


def test_reverse_complement_keeps_case_and_iupac():
    assert reverse_complement("AACgtN") == "NacGTT"
    assert reverse_complement("R") == "Y"


def test_fasta_labels_skips_and_errors(tmp_path):
    fa = tmp_path / "s.fa.gz"
    with gzip.open(fa, "wt") as fh:
        fh.write(">a label=1\nACGTACGTAC\n>b\nACGTACGTAA\n>empty\n\n>short label=0\nACG\n")
    seqs = read_fasta(fa, min_len=5)
    assert seqs.ids == ["a", "b"]
    assert [r.label for r in seqs.records] == [1.0, None]
    assert seqs.skipped == [("empty", "empty"), ("short", "3 bp < motif_len 5")]
    assert "skipped 2 records" in seqs.skip_summary()

    tsv = tmp_path / "labels.tsv"
    tsv.write_text("id\tlabel\na\t0\nb\t1\n")
    assert [r.label for r in read_fasta(fa, labels=tsv, min_len=5).records] == [0.0, 1.0]

    dup = tmp_path / "dup.fa"
    dup.write_text(">a\nACGT\n>a\nACGT\n")
    with pytest.raises(InputError, match="duplicate record ID 'a'"):
        read_fasta(dup)
    empty = tmp_path / "empty.fa"
    empty.write_text("")
    with pytest.raises(InputError, match="empty"):
        read_fasta(empty)
    bad = tmp_path / "bad.fa"
    bad.write_text(">r1\nACGT\n>r2\nAC-GT\n")
    with pytest.raises(InputError, match=r"bad.fa: record 'r2'.*'-' at position 3"):
        read_fasta(bad)


def test_bed_with_indexed_reference(tmp_path):
    ref = tmp_path / "ref.fa"
    ref.write_text(">chr1\nAAAACCCCGGGGTTTT\n>chr2\nacgtacgt\n")
    bed = tmp_path / "x.bed"
    bed.write_text("chr1\t4\t12\tpeak1\nchr2\t0\t4\t.\n")
    seqs = read_sequences(bed, reference=ref)
    assert seqs.seqs == ["CCCCGGGG", "acgt"]
    assert seqs.ids == ["peak1", "chr2:0-4"]
    bed.write_text("chr3\t0\t4\n")
    with pytest.raises(InputError, match="chromosome 'chr3'"):
        read_bed_sequences(bed, ref)


def test_deepbind_table_header_checked(tmp_path):
    bad = tmp_path / "bad.seq"
    bad.write_text("id\tsequence\nx\tACGT\n")
    with pytest.raises(InputError, match="header lacks column"):
        read_deepbind_table(bad)


@pytest.mark.parametrize(
    "reader",
    [read_fasta, read_deepbind_table, lambda p: list(iter_fasta(p))],
    ids=["read_fasta", "read_deepbind_table", "iter_fasta"],
)
def test_truncated_gzip_and_non_utf8_input_are_errors_naming_the_file(tmp_path, reader):
    table = "FoldID\tEventID\tseq\tBound\n" + "".join(f"A\tseq{i}\tACGTACGTACGTACGTACGT\t1\n" for i in range(3000))
    fasta = "".join(f">seq{i}\nACGTACGTACGTACGTACGT\n" for i in range(3000))
    whole = gzip.compress((table if reader is read_deepbind_table else fasta).encode())
    cut = tmp_path / "cut.gz"
    cut.write_bytes(whole[: len(whole) // 2])  # the gzip module raises a bare EOFError here
    with pytest.raises(InputError, match=r"cut\.gz: cannot read: Compressed file ended"):
        reader(cut)
    latin = tmp_path / "latin1.txt"
    first = table.splitlines()[0] + "\n" if reader is read_deepbind_table else ""
    latin.write_bytes(first.encode() + ">seq\u00e9\nACGT\n".encode("latin-1"))
    with pytest.raises(InputError, match=r"latin1\.txt: not UTF-8 text"):
        reader(latin)


@pytest.mark.skipif(not ENCODE.is_dir(), reason="shared ENCODE data not present")
def test_reads_real_encode_table():
    path = next(ENCODE.glob("GABPA*_B.seq.gz"))
    seqs = read_deepbind_table(path, min_len=24)
    assert len(seqs.records) == 1000 and not seqs.skipped
    assert Counter(r.label for r in seqs.records) == {0.0: 500, 1.0: 500}
    assert {len(s) for s in seqs.seqs} == {101}


def test_dinucleotide_shuffle_preserves_counts_exactly():
    rng = np.random.default_rng(0)
    for length in (3, 10, 101, 500):
        seq = "".join(rng.choice(list("ACGTN"), size=length, p=[0.3, 0.2, 0.2, 0.28, 0.02]))
        for _ in range(20):
            shuf = dinucleotide_shuffle(seq, rng)
            assert dinucleotide_counts(shuf) == dinucleotide_counts(seq)
            assert shuf[0] == seq[0] and shuf[-1] == seq[-1]
    # It actually shuffles, and the same seed gives the same negatives.
    seq = "".join(rng.choice(list("ACGT"), size=101))
    shuffles = shuffled_negatives([seq], 10, seed=3)
    assert len(set(shuffles)) > 5
    assert shuffles == shuffled_negatives([seq], 10, seed=3)


def test_positive_only_sets_get_shuffled_negatives(tmp_path):
    fa = tmp_path / "pos.fa"
    fa.write_text("".join(f">p{i}\n{'ACGTTGCA' * 4}\n" for i in range(5)))
    data = labelled(read_fasta(fa), negatives_per_positive=2, seed=0)
    assert len(data) == 15 and data.labels.sum() == 5
    assert all(dinucleotide_counts(s) == dinucleotide_counts("ACGTTGCA" * 4) for s in data.seqs)
