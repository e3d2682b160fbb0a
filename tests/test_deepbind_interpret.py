"""DeepBind interpretation and use: motifs + MEME, mutation maps, variant scores, genome scans."""

import json

import numpy as np
import pytest
import torch

from biocnn.checkpoint import load_model, save_model
from biocnn.cli import main
from biocnn.deepbind.model import DeepBind
from biocnn.deepbind.motifs import detector_sites
from biocnn.deepbind.mutation import mutation_map
from biocnn.deepbind.scan import WindowScorer, scan_fasta
from biocnn.io.sequences import codes, one_hot, reverse_complement

SPEC = {
    "num_motifs": 3,
    "motif_len": 6,
    "pool": "max",
    "hidden": 4,
    "dropout": 0.0,
    "init_scale": None,
    "both_strands": True,
}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A small model whose first detector is the motif GATTACA[:6] = GATTAC."""
    torch.manual_seed(0)
    model = DeepBind(**SPEC)
    with torch.no_grad():
        model.motif_conv.weight[0] = torch.from_numpy(one_hot("GATTAC")) * 2 - 0.5
        model.motif_conv.bias[0] = -4.0
    out = tmp_path_factory.mktemp("model")
    save_model(out, model, {"model": {"name": "deepbind", **SPEC}, "input_length": 40})
    return out


def _load(model_dir):
    model, _ = load_model(model_dir)
    return model


def _random(n, seed, alphabet="ACGT"):
    return "".join(np.random.default_rng(seed).choice(list(alphabet), size=n))


def test_detector_sites_recover_the_planted_motif_on_both_strands():
    model = DeepBind(num_motifs=1, motif_len=6, hidden=0)
    with torch.no_grad():
        model.motif_conv.weight[0] = torch.from_numpy(one_hot("GATTAC")) * 2 - 0.5
        model.motif_conv.bias[0] = -4.0
    seqs = []
    for i in range(20):
        s = _random(30, i)
        s = s[:10] + "GATTAC" + s[16:]
        seqs.append(reverse_complement(s) if i % 2 else s)  # half the sites on the reverse strand
    counts, n_sites = detector_sites(model, torch.from_numpy(np.stack([one_hot(s) for s in seqs])), 0.9)
    assert n_sites[0] == 20
    assert "".join("ACGT"[i] for i in counts[0].argmax(0)) == "GATTAC"


def test_motifs_cli_writes_meme_logos_and_jaspar_table(tmp_path, model_dir):
    from memelite.io import read_meme

    fa = tmp_path / "seqs.fa"
    fa.write_text("".join(f">s{i}\n{_random(12, i)}GATTAC{_random(12, i + 100)}\n" for i in range(30)))
    out = tmp_path / "motifs"
    assert main(["deepbind", "motifs", "--model", str(model_dir), "--sequences", str(fa), "--out", str(out)]) == 0
    motifs = read_meme(str(out / "motifs.meme"))
    assert 1 <= len(motifs) <= 3
    pwm = motifs["detector01"]
    assert pwm.shape == (4, 6) and np.allclose(pwm.sum(0), 1, atol=1e-4)
    assert "".join("ACGT"[i] for i in pwm.argmax(0)) == "GATTAC"
    assert (out / "logos" / "detector01.png").stat().st_size > 1000
    table = (out / "jaspar_matches.tsv").read_text().splitlines()
    assert table[0].startswith("motif\tn_sites\tbest_match\tp_value")
    assert len(table) == 1 + 3  # one row per detector, matched or not
    row = table[1].split("\t")
    assert row[0] == "detector01" and row[2].startswith("MA") and 0 < float(row[3]) <= 1


def test_mutation_map_matches_one_by_one_scoring(model_dir, tmp_path):
    model = _load(model_dir)
    seq = _random(15, 3) + "GATTAC" + _random(15, 4)
    ref, delta = mutation_map(model.eval(), seq)
    assert delta.shape == (4, len(seq))
    with torch.no_grad():
        assert ref == pytest.approx(float(model(torch.from_numpy(one_hot(seq))[None])), abs=1e-5)
        for pos, base in ((0, "A"), (16, "G"), (20, "T"), (35, "C")):
            mutant = seq[:pos] + base + seq[pos + 1 :]
            expected = float(model(torch.from_numpy(one_hot(mutant))[None])) - ref
            assert delta["ACGT".index(base), pos] == pytest.approx(expected, abs=1e-5)
    for i, ch in enumerate(seq):
        assert delta["ACGT".index(ch), i] == 0.0

    fa = tmp_path / "m.fa"
    fa.write_text(f">one\n{seq}\n>tiny\nACG\n")
    out = tmp_path / "maps"
    assert main(["deepbind", "mutation-map", "--model", str(model_dir), "--fasta", str(fa), "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert [m["id"] for m in summary["maps"]] == ["one"]
    assert summary["failures"][0]["id"] == "tiny"  # seen = written + failures
    assert (out / "one.png").is_file() and len((out / "one.tsv").read_text().splitlines()) == len(seq) + 1


def test_variants_scores_both_strands_and_reports_ref_mismatch(tmp_path, model_dir):
    genome = _random(200, 7)
    genome = genome[:100] + "GATTAC" + genome[106:]
    ref = tmp_path / "ref.fa"
    ref.write_text(">chr1\n" + genome + "\n")
    vcf = tmp_path / "v.vcf"
    lines = [
        "##fileformat=VCFv4.2",
        "#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO",
        "chr1\t101\tsite\tG\tC\t.\t.\t.",  # breaks the motif
        f"chr1\t150\tmm\t{'A' if genome[149] != 'A' else 'C'}\tT\t.\t.\t.",  # wrong REF
        f"chr1\t60\tins\t{genome[59]}\t{genome[59]}TT,{genome[59]}G\t.\t.\t.",  # multi-ALT insertion
        "chr9\t10\tnochrom\tA\tC\t.\t.\t.",
    ]
    vcf.write_text("\n".join(lines) + "\n")
    out = tmp_path / "v.tsv"
    assert (
        main(
            [
                "deepbind",
                "variants",
                "--model",
                str(model_dir),
                "--vcf",
                str(vcf),
                "--reference",
                str(ref),
                "--out",
                str(out),
            ]
        )
        == 0
    )
    rows = [
        dict(zip(*(row.split("\t") for row in (out.read_text().splitlines()[0], line))))
        for line in out.read_text().splitlines()[1:]
    ]
    assert [r["id"] for r in rows] == ["site", "mm", "ins", "ins", "nochrom"]
    site = rows[0]
    model = _load(model_dir)
    with torch.no_grad():

        def win(s):
            return torch.from_numpy(one_hot(s))[None]

        r, a = genome[80:121], genome[80:100] + "C" + genome[101:121]
        expected = float(model.eval()(win(a))) - float(model(win(r)))
        expected_fwd = float(model.strand_scores(win(a))) - float(model.strand_scores(win(r)))
    assert float(site["delta"]) == pytest.approx(expected, abs=1e-4)
    assert float(site["delta_forward"]) == pytest.approx(expected_fwd, abs=1e-4)
    assert float(site["delta"]) < 0
    assert rows[1]["status"] == "ref_mismatch" and "reference has" in rows[1]["note"]
    assert rows[4]["status"] == "failed" and "chr9" in rows[4]["note"]


@pytest.mark.parametrize("pool", ["max", "maxavg"])
def test_window_scorer_equals_model_on_each_window(pool):
    torch.manual_seed(1)
    model = DeepBind(num_motifs=4, motif_len=8, pool=pool, hidden=5).eval()
    seq = _random(400, 5, "ACGTN")
    x = torch.from_numpy(one_hot(seq))
    for backend in ("native", "torch"):
        scorer = WindowScorer(model, 40, 13, backend=backend)
        assert scorer.backend == backend  # the kernels are built: they are tested
        got = scorer.score(x if backend == "torch" else codes(seq))
        with torch.no_grad():
            expected = model(torch.stack([x[:, a : a + 40] for a in range(0, 400 - 40 + 1, 13)]))
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_scan_streams_records_in_chunks_and_writes_bedgraph_and_peaks(tmp_path, model_dir):
    genome = _random(3000, 11)
    genome = genome[:1500] + "GATTAC" + genome[1506:]
    fa = tmp_path / "g.fa"
    wrapped = "\n".join(genome[i : i + 70] for i in range(0, len(genome), 70))
    fa.write_text(f">chrA desc\n{wrapped}\n>chrB\n{_random(30, 12)}\n>chrC\nACG\n")
    prefix = tmp_path / "scan"
    stats = scan_fasta(DeepBind(**SPEC), fa, prefix, window=40, stride=20, chunk=200)  # random model first
    small_chunks = (tmp_path / "scan.bedgraph").read_text()
    assert (
        main(
            [
                "deepbind",
                "scan",
                "--model",
                str(model_dir),
                "--fasta",
                str(fa),
                "--out",
                str(prefix),
                "--window",
                "40",
                "--stride",
                "20",
                "--chunk",
                "200",
                "--threshold",
                "0",
            ]
        )
        == 0
    )
    stats = json.loads((tmp_path / "scan.json").read_text())
    assert stats["bp"] == 3033 and stats["short_records"] == ["chrC"]
    lines = [row.split("\t") for row in (tmp_path / "scan.bedgraph").read_text().splitlines()]
    chr_a = [row for row in lines if row[0] == "chrA"]
    assert len(chr_a) == (3000 - 40) // 20 + 1 and stats["windows"] == len(chr_a) + 1  # chrB: one short window
    model = _load(model_dir)
    with torch.no_grad():
        x = torch.from_numpy(one_hot(genome))
        expected = model.eval()(torch.stack([x[:, a : a + 40] for a in range(0, 3000 - 40 + 1, 20)])).numpy()
    np.testing.assert_allclose([float(row[3]) for row in chr_a], expected, atol=1e-3)
    assert [int(row[1]) for row in chr_a[:2]] == [10, 30]  # central stride of each window
    peaks = [row.split("\t") for row in (tmp_path / "scan.bed").read_text().splitlines()]
    planted = [p for p in peaks if p[0] == "chrA" and int(p[1]) <= 1500 and int(p[2]) >= 1506]
    assert planted, "the planted site should be inside a peak"
    assert small_chunks.count("\n") == len(lines)  # same windows whatever the model
