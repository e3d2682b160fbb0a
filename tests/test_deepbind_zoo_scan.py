"""Many models at once: ``scan`` and ``variants`` with several models (repeated ``--model`` or a
folder of model directories) give each model exactly what a one-model run gives it."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from biocnn.checkpoint import save_model
from biocnn.cli import main
from biocnn.deepbind import native, scan_zoo
from biocnn.deepbind.model import DeepBind

DB = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "deepbind" / "db"
# Imported models of different shapes: RNA (one strand, 16 bp, max+avg pooling), 24 bp without a
# hidden layer, 36 bp (the longest detectors of the release) and 14 bp (the shortest).
IMPORTED = ["D00210.001", "D00753.001", "D00328.018", "D00027.003"]
needs_kernels = pytest.mark.skipif(native.load() is None, reason="no scan kernels")


def _own_models(root: Path) -> list[Path]:
    """biocnn models of different motif lengths, pooling, hidden layers and strands."""
    shapes = [
        (4, 7, "maxavg", 0, True),
        (6, 11, "max", 8, True),
        (16, 24, "max", 32, False),
        (5, 40, "maxavg", 0, True),
    ]
    dirs = []
    for i, (motifs, k, pool, hidden, both) in enumerate(shapes):
        torch.manual_seed(i)
        spec = {
            "name": "deepbind",
            "num_motifs": motifs,
            "motif_len": k,
            "pool": pool,
            "hidden": hidden,
            "dropout": 0.0,
            "both_strands": both,
        }
        model = DeepBind(num_motifs=motifs, motif_len=k, pool=pool, hidden=hidden, both_strands=both).eval()
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p) * 0.3)
        config = {"model": spec, "input_length": 120} if k == 11 else {"model": spec}  # its own variant flank
        dirs.append(save_model(root / f"own{k}", model, config))
    return dirs


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> Path:
    """A folder of model directories: biocnn's own and, where the release is present, imported ones."""
    root = tmp_path_factory.mktemp("models")
    _own_models(root)
    if (DB / "db.tsv").is_file():
        assert main(["deepbind", "import", "--db", str(DB), "--out", str(root), "--ids", *IMPORTED]) == 0
    return root


def _genome(path: Path, seed: int = 0) -> Path:
    """Records of several lengths (one shorter than a window but longer than some motifs, one shorter
    than every motif), N runs, IUPAC codes and lowercase."""
    rng = np.random.default_rng(seed)
    records = {"chr1": 23_456, "chr2": 7_001, "short": 30, "tiny": 5, "chr3": 1_999}
    with path.open("w") as fh:
        for name, n in records.items():
            seq = rng.choice(list("ACGTacgt"), size=n)
            if n > 1000:
                seq[n // 3 : n // 3 + 250] = "N"
                seq[rng.choice(n, size=n // 100, replace=False)] = "R"
            fh.write(f">{name}\n")
            text = "".join(seq)
            fh.write("\n".join(text[i : i + 70] for i in range(0, n, 70)) + "\n")
    return path


def _names(folder: Path) -> list[str]:
    return sorted(d.name for d in folder.iterdir() if (d / "config.json").is_file())


@needs_kernels
def test_many_model_scan_writes_each_model_the_one_model_scans_bytes(models, tmp_path, monkeypatch):
    fasta = _genome(tmp_path / "genome.fa")
    names = _names(models)
    assert len(names) >= 4
    # Batches of the many-model scan far smaller than the one-model scan's (batch edges differ).
    monkeypatch.setattr(scan_zoo, "SCORES_PER_BATCH", 37 * len(names))
    out = tmp_path / "zoo"
    args = ["deepbind", "scan", "--fasta", str(fasta), "--stride", "17", "--threshold", "0.1"]
    assert main([*args, "--model", str(models), "--out", str(out)]) == 0
    summary = json.loads((out / "scan.json").read_text())
    config_names = []
    for name in names:
        config = json.loads((models / name / "config.json").read_text())
        config_names.append((config.get("deepbind") or {}).get("id") or name)
    assert summary["models"] == config_names and summary["backend"] == "native"
    for directory, name in zip(names, config_names):
        single = tmp_path / "single" / name
        assert main([*args, "--model", str(models / directory), "--out", str(single)]) == 0
        for ext in ("bedgraph", "bed"):
            ours, theirs = (out / f"{name}.{ext}").read_bytes(), Path(f"{single}.{ext}").read_bytes()
            assert ours == theirs, f"{name}.{ext} differs from the one-model scan"
        assert (out / f"{name}.bedgraph").stat().st_size > 0
    # the short record: scored whole by the models whose motif fits in it, by no other
    short = {name: b"short\t" in (out / f"{name}.bedgraph").read_bytes() for name in config_names}
    assert short["own7"] and not short["own40"]

    # repeated --model, in another order, gives the same files for those models
    again = tmp_path / "again"
    picked = [str(models / names[-1]), str(models / names[0])]
    assert main([*args, "--model", picked[0], "--model", picked[1], "--out", str(again)]) == 0
    for name in (config_names[-1], config_names[0]):
        assert (again / f"{name}.bedgraph").read_bytes() == (out / f"{name}.bedgraph").read_bytes()


def _vcf(path: Path, fasta: Path) -> Path:
    seq = "".join(line.strip() for line in fasta.read_text().split(">chr2")[0].splitlines()[1:])
    lines = ["##fileformat=VCFv4.2", "#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO"]
    for i, pos in enumerate([120, 500, 2_000, 9_000, 15_000, 23_450]):
        ref = seq[pos - 1].upper()
        alt = "ACGT"[("ACGT".index(ref) + 1) % 4] if ref in "ACGT" else "A"
        alts = f"{alt},{alt}TT" if i == 2 else alt
        lines.append(f"chr1\t{pos}\tv{i}\t{ref}\t{alts}\t.\t.\t.")
    wrong = "A" if seq[699].upper() != "A" else "C"
    lines.append(f"chr1\t700\tbadref\t{wrong}\tT\t.\t.\t.")
    lines.append("chrX\t10\tnochrom\tA\tC\t.\t.\t.")
    path.write_text("\n".join(lines) + "\n")
    return path


def test_many_model_variants_give_each_model_its_one_model_rows(models, tmp_path):
    fasta = _genome(tmp_path / "genome.fa")
    vcf = _vcf(tmp_path / "calls.vcf", fasta)
    names = _names(models)
    out = tmp_path / "zoo.tsv"
    assert main(["deepbind", "variants", "--model", str(models), "--vcf", str(vcf), "--reference", str(fasta),
                 "--out", str(out)]) == 0  # fmt: skip
    header, *rows = [line.split("\t") for line in out.read_text().splitlines()]
    assert header[:6] == ["chrom", "pos", "id", "ref", "alt", "model"]
    assert header[6:9] == ["ref_score", "alt_score", "delta"]
    n_alleles = 9
    assert len(rows) == n_alleles * len(names)
    by_model = {}
    for row in rows:
        by_model.setdefault(row[5], []).append(row[:5] + row[6:])
    # variant-major: each (variant, ALT) lists every model, in the models' order
    assert [row[5] for row in rows[: len(names)]] == list(by_model)
    for directory, name in zip(names, by_model):
        single = tmp_path / f"{name}.tsv"
        assert main(["deepbind", "variants", "--model", str(models / directory), "--vcf", str(vcf),
                     "--reference", str(fasta), "--out", str(single)]) == 0  # fmt: skip
        single_header, *single_rows = [line.split("\t") for line in single.read_text().splitlines()]
        assert single_header == header[:5] + header[6:]
        assert by_model[name] == single_rows
    statuses = [row[-2] for row in by_model[list(by_model)[0]]]
    assert statuses.count("ok") == 6 and statuses.count("ref_mismatch") == 1 and statuses.count("failed") == 2
    deltas = np.array([float(row[7]) for row in rows if row[-2] == "ok"])
    assert np.abs(deltas).max() > 0


def test_a_model_name_given_twice_is_an_error(models, tmp_path):
    fasta = _genome(tmp_path / "genome.fa")
    one = str(models / _names(models)[0])
    code = main(
        ["deepbind", "scan", "--model", one, "--model", one, "--fasta", str(fasta), "--out", str(tmp_path / "o")]
    )
    assert code != 0


@needs_kernels
@pytest.mark.skipif(not (DB / "db.tsv").is_file(), reason="the DeepBind release is absent")
def test_workflow_imports_named_models_and_scans_and_scores_variants_with_them(tmp_path):
    import subprocess
    import sys

    import yaml

    repo = Path(__file__).resolve().parents[1]
    fasta = _genome(tmp_path / "genome.fa")
    vcf = _vcf(tmp_path / "calls.vcf", fasta)
    ids = ["D00210.001", "D00753.001"]
    config = {
        "results": "results",
        "tasks": ["deepbind"],
        "deepbind": {"zoo": {"db": str(DB), "ids": ids, "genome": str(fasta), "variants": str(vcf)}},
    }
    (tmp_path / "zoo.yaml").write_text(yaml.safe_dump(config))
    run = subprocess.run(
        [sys.executable, "-m", "snakemake", "-s", str(repo / "Snakefile"), "--directory", str(tmp_path),
         "--configfile", str(tmp_path / "zoo.yaml"), "--cores", "2",
         # only these targets: the demo config's experiments (merged in) would train models
         "results/deepbind_zoo/scan/scan.json", "results/deepbind_zoo/variants.tsv"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    out = tmp_path / "results" / "deepbind_zoo"
    assert sorted(p.name for p in (out / "models").iterdir()) == ids
    # what the command line gives with the same models and the workflow's scan settings
    direct = tmp_path / "direct"
    args = ["--window", "101", "--stride", "50", "--threshold", "2.0"]
    models = [a for i in ids for a in ("--model", str(out / "models" / i))]
    assert main(["deepbind", "scan", *models, "--fasta", str(fasta), "--out", str(direct), *args]) == 0
    for i in ids:
        for ext in ("bedgraph", "bed"):
            assert (out / "scan" / f"{i}.{ext}").read_bytes() == (direct / f"{i}.{ext}").read_bytes()
    assert json.loads((out / "scan" / "scan.json").read_text())["models"] == ids
    table = (out / "variants.tsv").read_text().splitlines()
    assert table[0].split("\t")[5] == "model" and len(table) == 1 + 9 * len(ids)
    assert [row.split("\t")[5] for row in table[1:3]] == ids


@needs_kernels
def test_a_failed_many_model_scan_leaves_no_output(models, tmp_path):
    fasta = tmp_path / "bad.fa"
    fasta.write_text(">chr1\n" + "ACGT" * 500 + "\n>chr2\n" + "ACGT" * 100 + "X" + "ACGT" * 100 + "\n")
    out = tmp_path / "out"
    assert main(["deepbind", "scan", "--model", str(models), "--fasta", str(fasta), "--out", str(out)]) != 0
    assert list(out.iterdir()) == []  # neither a model's file nor the hidden work folder


def _peaks_one_window_at_a_time(batches, window: int, threshold: float) -> str:
    """The peak BED built window by window: the windows above the threshold that overlap or touch
    merged, masked windows left out, a peak closed at each record's end."""
    lines, peak = [], None

    def close():
        nonlocal peak
        if peak is not None:
            lines.append(f"{peak[0]}\t{peak[1]}\t{peak[2]}\tpeak{len(lines) + 1}\t{peak[3]:.4f}\n")
            peak = None

    for chrom, starts, scores, ends, record_end in batches:
        mask = np.ma.getmaskarray(scores)
        ends = starts + window if ends is None else ends
        for start, end, value, masked in zip(starts.tolist(), ends.tolist(), np.ma.getdata(scores).tolist(), mask):
            if masked or not value > threshold:
                continue
            if peak is not None and peak[0] == chrom and start <= peak[2]:
                peak[2], peak[3] = max(peak[2], end), max(peak[3], value)
            else:
                close()
                peak = [chrom, start, end, value]
        if record_end:
            close()
    close()
    return "".join(lines)


@pytest.mark.parametrize("seed", range(10))
def test_peaks_are_the_same_whatever_the_batch_edges(seed):
    """A many-model scan cuts records into smaller batches than a one-model scan: the peaks written
    a batch at a time (whole runs in one write, the last run left open) are those found window by
    window."""
    import io

    from biocnn.deepbind.tracks import TrackWriter

    rng = np.random.default_rng(seed)
    window, stride = int(rng.integers(10, 120)), int(rng.integers(1, 60))
    threshold = float(rng.choice([-1.0, 0.0, 0.5]))
    batches = []
    for chrom in ("chr1", "chr2", "chrM"):
        offset = 0
        for _ in range(int(rng.integers(1, 6))):
            n = int(rng.integers(0, 60))
            starts = offset + np.arange(n, dtype=np.int64) * stride
            scores = rng.normal(size=n).astype(np.float32)
            if rng.random() < 0.4:
                scores = np.ma.masked_array(scores, rng.random(n) < 0.2)
            batches.append((chrom, starts, scores, None, False))
            offset += n * stride
        # the record's short end, scored whole, then the record's end
        batches.append((chrom, np.array([offset]), np.array([1.0], np.float32), np.array([offset + 3]), True))
    bed = io.StringIO()
    writer = TrackWriter(io.BytesIO(), bed, window, stride, threshold)
    for chrom, starts, scores, ends, record_end in batches:
        writer.windows(chrom, starts, scores, ends)
        if record_end:
            writer.flush()
    expected = _peaks_one_window_at_a_time(batches, window, threshold)
    assert bed.getvalue() == expected and writer.n_peaks == expected.count("\n") > 0
