"""Genome scans and variant tables given hostile inputs (issue 22): the batch size never changes
the output, duplicate record names and N-only windows are not silently wrong."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from biocnn.deepbind.model import DeepBind
from biocnn.deepbind.scan import scan_fasta
from biocnn.deepbind.scan_batches import uninformative_windows
from biocnn.errors import InputError
from biocnn.io.dna import CODES

STABLE_STATS = ("bp", "windows", "records", "short_records", "peaks", "uninformative_windows")


def _seq(n: int, seed: int) -> str:
    rng = np.random.default_rng(seed)
    return "".join(rng.choice(list("ACGT"), size=n))


def _fasta(path, records: dict[str, str]):
    path.write_text(
        "".join(f">{k}\n" + "\n".join(s[i : i + 60] for i in range(0, len(s), 60)) + "\n" for k, s in records.items())
    )
    return path


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(3)
    return DeepBind(num_motifs=4, motif_len=9, hidden=8).eval()


@pytest.mark.parametrize("window,stride", [(50, 20), (50, 45), (30, 70)])
def test_scan_output_does_not_depend_on_the_batch_size(tmp_path, model, window, stride):
    """Records whose last batch leaves a rest shorter than a window (or than a motif) for one
    batch size and not for another: bedGraph, BED and counts stay the same."""
    records = {f"r{n}": _seq(n, n) for n in (1030, 1005, 1035, 999, 40, 5)}
    fa = _fasta(tmp_path / "g.fa", records)
    out = {}
    for chunk in (200, 260, 333, 10**6):
        stats = scan_fasta(model, fa, tmp_path / f"c{chunk}", window=window, stride=stride, threshold=0.0, chunk=chunk)
        out[chunk] = (
            (tmp_path / f"c{chunk}.bedgraph").read_bytes(),
            (tmp_path / f"c{chunk}.bed").read_bytes(),
            {k: stats.get(k) for k in STABLE_STATS},
        )
    assert all(v == out[10**6] for v in out.values())
    # One row per window at 0, stride, ... that fits, and one for the record shorter than a window.
    rows = [line.split("\t") for line in out[200][0].decode().splitlines()]
    lengths = [len(s) for s in records.values()]
    assert len(rows) == sum((n - window) // stride + 1 if n >= window else int(n >= 9) for n in lengths)
    assert out[200][2]["short_records"] == ["r5"]


def test_duplicate_record_names_are_an_error_naming_the_record(tmp_path, model):
    fa = tmp_path / "dup.fa"
    fa.write_text(f">chr1\n{_seq(300, 1)}\n>chr2\n{_seq(300, 2)}\n>chr1 another\n{_seq(300, 3)}\n")
    with pytest.raises(InputError, match=r"dup\.fa: record name 'chr1' appears more than once"):
        scan_fasta(model, fa, tmp_path / "o", window=50, stride=25, chunk=1000)
    assert not (tmp_path / "o.bedgraph").exists()


def test_uninformative_windows_are_the_windows_without_acgt():
    raw = np.frombuffer(b"ACGTNNNNNNNNNNRYACGTnnnnnnnnnn", np.uint8)
    codes = CODES[raw]
    idx = uninformative_windows(codes, (len(codes) - 6) // 2 + 1, 6, 2)
    expected = [i for i in range((len(codes) - 6) // 2 + 1) if all(c >= 4 for c in codes[2 * i : 2 * i + 6])]
    assert idx.tolist() == expected and expected
    assert uninformative_windows(CODES[np.frombuffer(b"ACGTACGTAC", np.uint8)], 3, 4, 3).size == 0


def test_mutation_map_files_are_distinct_and_inside_for_any_record_id(tmp_path, model):
    from biocnn.checkpoint import save_model
    from biocnn.deepbind.mutation import run_mutation_maps

    spec = {"name": "deepbind", "num_motifs": 4, "motif_len": 9, "hidden": 8}
    model_dir = save_model(tmp_path / "model", model, {"model": spec})
    ids = ["a/b", "a_b", "../../up"]
    fa = tmp_path / "ids.fa"
    fa.write_text("".join(f">{i}\n{_seq(40, n)}\n" for n, i in enumerate(ids)))
    out = tmp_path / "maps"
    written, failures = run_mutation_maps(model_dir, fa, out)
    assert written == 3 and failures == []
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert len(pngs) == 3 and "a_b.png" in pngs  # a plain id keeps its name
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ids.fa", "maps", "model"]  # nothing outside


@pytest.mark.parametrize("chunk", [300, 10**6])
def test_n_only_windows_are_counted_not_scored_and_never_peaks(tmp_path, model, chunk):
    left, right = _seq(1000, 4), _seq(1000, 5)
    seq = left + "N" * 400 + right
    fa = _fasta(tmp_path / "n.fa", {"chrN": seq, "allN": "N" * 200, "shortN": "N" * 30})
    window, stride = 50, 20
    stats = scan_fasta(model, fa, tmp_path / "o", window=window, stride=stride, threshold=-1e9, chunk=chunk)
    starts = range(0, len(seq) - window + 1, stride)
    n_only = [p for p in starts if 1000 <= p and p + window <= 1400]
    expected = len(n_only) + len(range(0, 200 - window + 1, stride)) + 1  # + the short all-N record
    assert stats["uninformative_windows"] == expected
    assert json.loads((tmp_path / "o.json").read_text())["uninformative_windows"] == expected
    rows = [line.split("\t") for line in (tmp_path / "o.bedgraph").read_text().splitlines()]
    assert {r[0] for r in rows} == {"chrN"}
    assert len(rows) == len(starts) - len(n_only)
    # Every informative window is above this threshold: the peaks stop at the N run.
    peaks = [line.split("\t") for line in (tmp_path / "o.bed").read_text().splitlines()]
    assert [(p[0], int(p[1]), int(p[2])) for p in peaks] == [
        ("chrN", 0, n_only[0] - stride + window),
        ("chrN", n_only[-1] + stride, starts[-1] + window),
    ]


def _mammo_dir(path):
    from biocnn.checkpoint import save_model
    from biocnn.models import build_model

    spec = {"name": "classifier", "spatial_dims": 2, "in_channels": 1, "channels": [4, 8], "hidden": [4]}
    return save_model(path, build_model(spec), {"model": spec})


VCF_HEAD = "##fileformat=VCFv4.2\n#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO\n"


def test_a_mammography_model_given_to_scan_or_variants_is_one_line(tmp_path, capsys):
    from biocnn.cli import main

    model_dir = _mammo_dir(tmp_path / "mammo_model")
    fa = _fasta(tmp_path / "g.fa", {"chr1": _seq(500, 1)})
    vcf = tmp_path / "v.vcf"
    vcf.write_text(VCF_HEAD + "chr1\t250\t.\tA\tC\t.\t.\t.\n")
    for argv in (
        ["deepbind", "scan", "--model", str(model_dir), "--fasta", str(fa), "--out", str(tmp_path / "s")],
        ["deepbind", "variants", "--model", str(model_dir), "--vcf", str(vcf), "--reference", str(fa)]
        + ["--out", str(tmp_path / "v.tsv")],
    ):
        assert main(argv) == 1
        err = capsys.readouterr().err
        assert "Traceback" not in err and err.count("\n") == 1
        assert f"{model_dir}: holds a mammography classifier, not a DeepBind binding model" in err


def test_a_variant_outside_its_chromosome_is_reported_as_such(tmp_path, model):
    from biocnn.checkpoint import save_model
    from biocnn.deepbind.variants import run_variants

    spec = {"name": "deepbind", "num_motifs": 4, "motif_len": 9, "hidden": 8}
    model_dir = save_model(tmp_path / "model", model, {"model": spec})
    seq = _seq(1000, 1)
    fa = _fasta(tmp_path / "ref.fa", {"chr1": seq})
    vcf = tmp_path / "v.vcf"
    vcf.write_text(
        VCF_HEAD
        + f"chr1\t500\tmid\t{seq[499]}\tN\t.\t.\t.\n"
        + f"chr1\t10\tnear\t{seq[9]}\tN\t.\t.\t.\n"
        + "chr1\t5000000\tfar\tA\tC\t.\t.\t.\n"
    )
    out = tmp_path / "v.tsv"
    run_variants(model_dir, vcf, fa, out, flank=20)
    notes = {r.split("\t")[2]: r.split("\t")[-1] for r in out.read_text().splitlines()[1:]}
    assert notes["far"] == "position 5000000 is outside chr1 (1 to 1000)"
    assert notes["near"] == "within 20 bp of the end of chr1"
