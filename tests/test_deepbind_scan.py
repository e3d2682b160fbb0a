"""Genome scan internals: the C kernels against the model, the block FASTA reader, bedGraph output."""

import gzip
import json
import threading
import time

import numpy as np
import pytest
import torch
from Bio import SeqIO

from biocnn.deepbind import native
from biocnn.deepbind.model import DeepBind
from biocnn.deepbind.scan import scan_fasta
from biocnn.deepbind.scan_batches import record_batches
from biocnn.deepbind.scan_pipeline import ScanPipeline
from biocnn.deepbind.scan_scorer import NATIVE_BLOCK, KernelFallbackWarning, WindowScorer
from biocnn.deepbind.tracks import TrackWriter
from biocnn.errors import InputError
from biocnn.io import fasta_stream
from biocnn.io.dna import CODES, codes, one_hot
from biocnn.io.fasta_stream import chunk_codes, stream_records


def needs_kernels(test):
    """Marks a test that needs the compiled scan kernels, skipped with the reason where they are absent."""
    absent = pytest.mark.skipif(native.load() is None, reason=f"no scan kernels: {native.missing_reason()}")
    return pytest.mark.kernels(absent(test))


def _genome(n, seed):
    """Random ACGT with a long N run, scattered IUPAC codes and lowercase (as in real assemblies)."""
    rng = np.random.default_rng(seed)
    seq = rng.choice(list("ACGT"), size=n)
    seq[n // 3 : n // 3 + 300] = "N"
    seq[rng.choice(n, size=n // 200, replace=False)] = rng.choice(list("NRYSWKMBDHV"), size=n // 200)
    low = rng.choice(n, size=n // 10, replace=False)
    seq[low] = np.char.lower(seq[low])
    return "".join(seq)


def _has_acgt(seq: str) -> bool:
    """Whether a window holds an informative base (the scan leaves N-only windows out)."""
    return any(c in "ACGTacgt" for c in seq)


@needs_kernels
@pytest.mark.parametrize(
    "motifs,motif_len,window,stride,pool,hidden",
    [
        (16, 24, 101, 50, "max", 32),  # the default DeepBind model and scan: 32 channels, 6 look-ups a position
        (16, 24, 101, 50, "maxavg", 32),
        (5, 7, 30, 40, "maxavg", 0),  # stride > window: gaps between windows; 10 channels padded to 16
        (24, 11, 60, 7, "max", 8),  # 48 channels; windows overlap by many strides
        # fused edges (stride >= motif_len - 1) where a base's left- and right-edge pieces overlap by 7
        # columns, or leave a gap of 5 between them, at bases inside windows (the default: overlap of 1)
        (6, 9, 15, 8, "maxavg", 16),
        (6, 8, 19, 12, "maxavg", 0),
    ],
)
def test_native_scores_equal_the_model_on_every_window(motifs, motif_len, window, stride, pool, hidden):
    torch.manual_seed(3)
    model = DeepBind(num_motifs=motifs, motif_len=motif_len, pool=pool, hidden=hidden).eval()
    seq = _genome(6000 if stride < 10 else 14000, 4)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)  # more windows than two kernel blocks: the windows are split over threads
    try:
        scorer = WindowScorer(model, window, stride, backend="native")
    finally:
        torch.set_num_threads(threads)
    assert scorer.backend == "native" and scorer.threads == 2
    got = scorer.score(codes(seq))
    x = torch.from_numpy(one_hot(seq))
    starts = range(0, len(seq) - window + 1, stride)
    assert len(got) == len(starts) > 2 * NATIVE_BLOCK
    with torch.no_grad():
        expected = model(torch.stack([x[:, a : a + window] for a in starts]))
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_stream_records_reads_blocks_gzip_and_crlf_like_biopython(tmp_path, monkeypatch):
    monkeypatch.setattr(fasta_stream, "_READ_BLOCK", 7)  # every header and line break straddles reads
    records = [("chr1", _genome(500, 1)), ("chr2 second record", "ACGTN" * 3), ("empty", ""), ("chrM", _genome(130, 2))]
    text = "".join(
        f">{name}\r\n" + "\r\n".join(seq[i : i + 61] for i in range(0, len(seq), 61)) + "\r\n" for name, seq in records
    )
    plain, gz = tmp_path / "g.fa", tmp_path / "g.fa.gz"
    plain.write_bytes(text.encode())
    gz.write_bytes(gzip.compress(text.encode()))
    expected = [(r.id, str(r.seq)) for r in SeqIO.parse(plain, "fasta")]
    for path in (plain, gz):
        got = [(name, b"".join(pieces).decode()) for name, pieces in stream_records(path)]
        assert got == expected
    skipped = [name for name, _ in stream_records(plain)]  # pieces not read are skipped
    assert skipped == ["chr1", "chr2", "empty", "chrM"]


@needs_kernels
def test_bedgraph_from_the_c_formatter_equals_python_formatting(tmp_path):
    kernels = native.load()
    # Halfway cases (rounded to even, as Python does), negative zero, small negatives, large values.
    values = np.array(
        [
            0.0,
            -0.0,
            0.00005,
            0.00015,
            -0.00004,
            1.23456,
            -7.77775,
            123456.5,
            2.5e-5,
            1e-9,
            0.99995,
            9.99999e13,
            -3e14,
            1e20,
            -3.4e38,
            np.inf,
            -np.inf,
            np.nan,
            *np.random.default_rng(0).normal(0, 3, 500),
        ],
        np.float32,
    )
    starts = np.arange(len(values), dtype=np.int64) * 7_777_777  # 1 to 10 digits
    for chrom in ("chrUn_KI270302v1", "a_record_name_longer_than_32_characters"):  # both copy paths
        out = {}
        for name, formatter in (("c", kernels), ("python", None)):
            with open(tmp_path / name, "wb") as fh:
                TrackWriter(fh, None, 101, 50, float("inf"), formatter).windows(chrom, starts, values)
            out[name] = (tmp_path / name).read_bytes()
        assert out["c"] == out["python"]
        assert out["c"].count(b"\n") == len(values)


@needs_kernels
def test_scan_backends_agree_and_invalid_character_names_its_position(tmp_path):
    torch.manual_seed(0)
    model = DeepBind(num_motifs=6, motif_len=10, hidden=4).eval()
    seq = _genome(5000, 9)
    fa = tmp_path / "g.fa.gz"
    fa.write_bytes(gzip.compress((">chrA\n" + "\n".join(seq[i : i + 80] for i in range(0, 5000, 80)) + "\n").encode()))
    rows = {}
    for backend in ("native", "torch"):
        stats = scan_fasta(model, fa, tmp_path / backend, window=50, stride=25, chunk=600, backend=backend)
        assert stats["backend"] == backend and stats["windows"] == (5000 - 50) // 25 + 1
        assert stats.get("kernel_isa") == (native.load().isa if backend == "native" else None)
        assert "fast_path_missing" not in stats  # torch was asked for: nothing is missing
        rows[backend] = np.array(
            [
                [float(v) for v in line.split("\t")[1:]]
                for line in (tmp_path / f"{backend}.bedgraph").read_text().splitlines()
            ]
        )
    assert rows["native"].shape == rows["torch"].shape
    np.testing.assert_array_equal(rows["native"][:, :2], rows["torch"][:, :2])  # batches written in order
    np.testing.assert_allclose(rows["native"][:, 2], rows["torch"][:, 2], atol=2e-4)

    bad = tmp_path / "bad.fa"
    bad.write_text(">chrA\n" + seq[:3000] + "\n" + seq[3000:4321] + "X" + seq[4322:] + "\n")
    with pytest.raises(InputError, match=r"'chrA'.*invalid character 'X' at position 4322"):
        scan_fasta(model, bad, tmp_path / "bad", window=50, stride=25, chunk=600)


def test_models_wider_than_the_c_kernel_fall_back_to_torch_loudly_and_stay_exact(tmp_path):
    torch.manual_seed(2)
    model = DeepBind(num_motifs=130, motif_len=6, hidden=4).eval()  # 260 channels > MAX_CHANNELS
    with pytest.warns(KernelFallbackWarning, match="260 channels"):
        scorer = WindowScorer(model, 30, 10)
    assert scorer.backend == "torch" and "at most 256" in scorer.fallback_reason
    with pytest.raises(RuntimeError, match="native scan backend cannot run: the model has 260"):
        WindowScorer(model, 30, 10, backend="native")
    seq = _genome(200, 5)
    x = torch.from_numpy(one_hot(seq))
    with torch.no_grad():
        expected = model(torch.stack([x[:, a : a + 30] for a in range(0, 200 - 30 + 1, 10)]))
    torch.testing.assert_close(scorer.score(x), expected, atol=1e-5, rtol=1e-5)


def test_missing_kernels_are_reported_on_stderr_and_in_the_summary(tmp_path, monkeypatch, capsys):
    """A copy of the package whose kernels were never built still scans (on torch, the same
    scores), and says so: a warning on stderr and ``fast_path_missing`` in PREFIX.json."""

    def not_built(isa):
        raise ImportError(f"No module named 'biocnn.deepbind.kernels._scan_{isa}'")

    monkeypatch.setattr(native, "_import", not_built)
    monkeypatch.setattr(native, "_CACHE", {})
    monkeypatch.delenv(native.ISA_ENV, raising=False)
    assert native.load() is None and native.available() == [] and native.cpu_level() == -1
    torch.manual_seed(0)
    model = DeepBind(num_motifs=4, motif_len=8, hidden=4).eval()
    fa = tmp_path / "g.fa"
    fa.write_text(">c\n" + _genome(1000, 3) + "\n")
    with pytest.warns(KernelFallbackWarning) as warned:
        stats = scan_fasta(model, fa, tmp_path / "o", window=50, stride=25)
    assert "scan kernels are missing" in str(warned[0].message) and "pip install" in str(warned[0].message)
    summary = json.loads((tmp_path / "o.json").read_text())
    assert summary["backend"] == stats["backend"] == "torch" and "kernel_isa" not in summary
    assert "scan kernels are missing" in summary["fast_path_missing"]
    seq = _genome(1000, 3)
    x = torch.from_numpy(one_hot(seq))
    starts = [a for a in range(0, 1000 - 50 + 1, 25) if _has_acgt(seq[a : a + 50])]
    with torch.no_grad():
        expected = model(torch.stack([x[:, a : a + 50] for a in starts])).numpy()
    got = [float(line.split("\t")[3]) for line in (tmp_path / "o.bedgraph").read_text().splitlines()]
    np.testing.assert_allclose(got, expected, atol=1e-4)
    with pytest.raises(RuntimeError, match="scan kernels are missing"):
        WindowScorer(model, 50, 25, backend="native")


@needs_kernels
@pytest.mark.parametrize("isa", native.available() or ["baseline"])
def test_c_encoder_matches_the_code_table_and_finds_the_first_invalid_byte(isa):
    """The encoder's vector path (64 bases per step, where the CPU has it) and its scalar tail give
    the table's codes, and report the first invalid byte wherever it falls, non-ASCII included."""
    kernels = native.load(isa)
    raw = np.random.default_rng(3).choice(np.frombuffer(b"ACGTNacgtnRYKMSWBDHV", np.uint8), 1000).tobytes()
    np.testing.assert_array_equal(chunk_codes(raw, "r", "f", 0, kernels), CODES[np.frombuffer(raw, np.uint8)])
    for pos in (0, 63, 64, 700, 999):  # first / last byte of a vector step, the scalar tail
        for char in (b"X", b"-", b"\xc3"):
            bad = raw[:pos] + char + raw[pos + 1 :] + b"!"  # a later invalid byte must not be reported
            with pytest.raises(InputError, match=rf"invalid character .* at position {pos + 1}$"):
                chunk_codes(bad, "r", "f", 0, kernels)


@needs_kernels
def test_near_ties_in_the_pooled_maximum_keep_the_models_scores():
    """Windows where many positions tie for a detector's maximum (tandem repeats, homopolymer runs,
    a motif whose columns are all equal, a motif of zeros whose output is its bias, positive on one
    strand of channels and negative on another) score as the model does: whichever position the
    kernel's max keeps, the value must be the exact one."""
    torch.manual_seed(11)
    model = DeepBind(num_motifs=16, motif_len=24, hidden=32).eval()
    with torch.no_grad():
        w = model.motif_conv.weight  # (16, 4, 24)
        w[0] = w[0, :, :1].expand(4, 24)  # equal columns: the output counts bases, position-free
        w[1] = 0.0  # output = bias everywhere
        model.motif_conv.bias[1] = 0.3
        w[2] = 0.0
        model.motif_conv.bias[2] = -0.2
        w[3] = torch.round(w[3] * 8) / 8  # coarse weights: many windows of equal sums
    rng = np.random.default_rng(2)
    pieces = ["ACG" * 200, "A" * 400, "CA" * 150, "".join(rng.choice(list("ACGT"), 600)), "GATTACA" * 60]
    seq = "".join(pieces * 2)
    scorer = WindowScorer(model, 101, 50, backend="native")
    got = scorer.score(codes(seq))
    x = torch.from_numpy(one_hot(seq))
    with torch.no_grad():
        expected = model(torch.stack([x[:, a : a + 101] for a in range(0, len(seq) - 100, 50)]))
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


@needs_kernels
@pytest.mark.parametrize("isa", native.available() or ["baseline"])
def test_every_build_this_cpu_runs_gives_the_models_scores(isa):
    """Each instruction set's build (16-lane vectors with AVX-512, 8 with AVX2, generic vector code
    otherwise) equals the model on every window, max and max+avg pooling."""
    seq = _genome(8000, 6)
    x = torch.from_numpy(one_hot(seq))
    windows = torch.stack([x[:, a : a + 101] for a in range(0, len(seq) - 101 + 1, 50)])
    kernels = native.load(isa)
    assert kernels.isa == isa and kernels.vector_width == (16 if isa == "avx512" else 8)
    for pool in ("max", "maxavg"):
        torch.manual_seed(5)
        model = DeepBind(num_motifs=16, motif_len=24, pool=pool, hidden=32).eval()
        with torch.no_grad():
            expected = model(windows)
        scorer = WindowScorer(model, 101, 50, backend="native")
        scorer.kernels = kernels
        torch.testing.assert_close(scorer.score(codes(seq)), expected, atol=1e-5, rtol=1e-5)


@needs_kernels
def test_the_best_build_is_picked_and_a_forced_one_must_be_runnable(monkeypatch):
    level = native.cpu_level()
    runnable = native.available()
    assert runnable[0] == {2: "avx512", 1: "avx2", 0: "baseline"}[level] and runnable[-1] == "baseline"
    assert native.load().isa == runnable[0]
    monkeypatch.setenv(native.ISA_ENV, "baseline")
    assert native.load().isa == "baseline"
    assert native.load("nonsense") is None and "unknown kernel build 'nonsense'" in native.missing_reason("nonsense")


@needs_kernels
def test_scratch_memory_the_kernel_cannot_allocate_is_a_memory_error():
    torch.manual_seed(0)
    model = DeepBind(num_motifs=4, motif_len=8, hidden=4).eval()
    scorer = WindowScorer(model, 50, 25, backend="native")
    buf, lead = scorer._padded(1000)
    w1t, b1, w2, b2 = scorer.head_weights
    out = np.empty(39, np.float32)
    with pytest.raises(MemoryError, match="cannot allocate"):
        scorer.kernels.score(
            buf, lead, scorer.ztab, *scorer.pad_vectors, 8, 50, 25, 0, 39, 1 << 44, 4, 2, False, w1t, b1, w2, b2, out
        )


def test_scan_output_is_the_same_with_one_or_two_threads(tmp_path):
    """Two threads score batches in parallel (one each); the files must not change by a byte:
    records of all lengths (empty, shorter than the motif, shorter than a window), N runs,
    IUPAC codes and lowercase, many batches per record."""
    torch.manual_seed(1)
    model = DeepBind(num_motifs=4, motif_len=9, hidden=8).eval()
    records = [_genome(n, 7 + n) if n else "" for n in (9000, 5, 0, 40, 6100)]
    fa = tmp_path / "multi.fa"
    fa.write_text(
        "".join(
            f">r{i}\n" + "\n".join(s[j : j + 70] for j in range(0, len(s), 70)) + "\n" for i, s in enumerate(records)
        )
    )
    threads = torch.get_num_threads()
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            stats = scan_fasta(model, fa, tmp_path / f"t{n}", window=50, stride=20, threshold=0.0, chunk=1000)
            assert stats["short_records"] == ["r1", "r2"]
    finally:
        torch.set_num_threads(threads)
    for ext in ("bedgraph", "bed"):
        assert (tmp_path / f"t1.{ext}").read_bytes() == (tmp_path / f"t2.{ext}").read_bytes()
    written = stats["windows"] - stats["uninformative_windows"]  # the N run's windows are left out
    assert (tmp_path / "t1.bedgraph").read_text().count("\n") == written > 700 and stats["uninformative_windows"] > 0


def test_record_batches_match_slices_of_the_whole_record_for_any_piece_split():
    """Batches assembled from pieces (views inside one piece, joins across pieces) equal slices
    of the joined record, for overlapping (step < take) and gapped (step > take) batches."""
    rng = np.random.default_rng(0)
    for _ in range(500):
        n = int(rng.integers(0, 300))
        seq = np.frombuffer(b"ACGT", np.uint8)[rng.integers(0, 4, n)].tobytes()
        cuts = sorted(rng.integers(0, n + 1, int(rng.integers(0, 8))).tolist())
        pieces = [seq[a:b] for a, b in zip([0, *cuts], [*cuts, n])]
        take, step = (int(v) for v in rng.integers(1, 60, 2))
        got = [(bytes(b), o, last) for b, o, last in record_batches(iter(pieces), take, step)]
        expected, o = [], 0
        while n - o >= take:
            expected.append((seq[o : o + take], o, False))
            o += step
        assert got == [*expected, (seq[o:], o, True)]


@pytest.mark.parametrize("read_block", [200, 417, 611])
def test_windows_farther_apart_than_a_window_score_the_right_bases(tmp_path, monkeypatch, read_block):
    """stride > window: the bases between windows are skipped across read blocks, also where a
    batch's last step reaches past the buffered bases."""
    monkeypatch.setattr(fasta_stream, "_READ_BLOCK", read_block)
    torch.manual_seed(0)
    model = DeepBind(num_motifs=4, motif_len=8, hidden=0).eval()
    seq = _genome(3000, 1)
    fa = tmp_path / "g.fa"
    fa.write_text(">c\n" + "\n".join(seq[i : i + 60] for i in range(0, 3000, 60)) + "\n")
    scan_fasta(model, fa, tmp_path / "o", window=30, stride=70, chunk=200)
    rows = [line.split("\t") for line in (tmp_path / "o.bedgraph").read_text().splitlines()]
    assert [int(r[1]) for r in rows] == [a for a in range(0, 3000 - 30 + 1, 70) if _has_acgt(seq[a : a + 30])]
    x = torch.from_numpy(np.stack([one_hot(seq[int(r[1]) : int(r[1]) + 30]) for r in rows])).float()
    with torch.no_grad():
        expected = model(x).numpy()
    np.testing.assert_allclose([float(r[3]) for r in rows], expected, atol=1e-4)


def test_jobs_read_ahead_of_the_writing_stay_bounded(tmp_path, monkeypatch):
    """Workers read on while the writing lags, but never more than the pipeline's limit of jobs
    ahead of it: a FASTA of many records shorter than a window (one record-end job each, the
    record scored whole). Each write waits until the readers have stopped (reached the limit, or
    read everything), so the test does not depend on timing; were the read-ahead unbounded,
    the readers would read every job before the first write."""
    ahead = []
    write = ScanPipeline._write

    def write_once_readers_stopped(self, *args):
        deadline = time.monotonic() + 60
        while self.next_read - self.next_write < self.limit and not self.stop:
            assert time.monotonic() < deadline, "the readers never reached the limit"
            time.sleep(0.001)
        ahead.append(self.next_read - self.next_write)
        write(self, *args)

    monkeypatch.setattr(ScanPipeline, "_write", write_once_readers_stopped)
    torch.manual_seed(0)
    model = DeepBind(num_motifs=4, motif_len=8, hidden=0).eval()
    seq = _genome(6000, 3).replace("N", "A")
    fa = tmp_path / "short.fa"
    fa.write_text("".join(f">r{i}\n{seq[60 * i : 60 * i + 60]}\n" for i in range(100)))
    stats = scan_fasta(model, fa, tmp_path / "o", window=101, stride=50)
    assert stats["windows"] == 100 == len((tmp_path / "o.bedgraph").read_text().splitlines())
    limit = 2 * max(2, torch.get_num_threads())
    assert len(ahead) == 100 and ahead[0] == max(ahead) == limit


def test_the_first_invalid_base_in_the_file_is_reported_whichever_batch_fails_first(tmp_path, monkeypatch):
    """Batches are scored in parallel; when two contain invalid characters, the error names the
    one earlier in the file even if the later batch fails first."""
    score_bases = WindowScorer.score_bases
    later_failed = threading.Event()

    def first_waits(self, raw, record, source, offset=0, split=True):
        if offset == 0:
            later_failed.wait(60)  # the later batch fails first
        try:
            return score_bases(self, raw, record, source, offset, split)
        except InputError:
            if offset:
                later_failed.set()
            raise

    monkeypatch.setattr(WindowScorer, "score_bases", first_waits)
    seq = list(_genome(3000, 2).replace("N", "A"))
    seq[100], seq[2500] = "!", "?"
    fa = tmp_path / "bad.fa"
    fa.write_text(">c\n" + "".join(seq) + "\n")
    torch.manual_seed(0)
    model = DeepBind(num_motifs=4, motif_len=8, hidden=0).eval()
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        with pytest.raises(InputError, match="invalid character '!' at position 101"):
            scan_fasta(model, fa, tmp_path / "o", window=50, stride=25, chunk=1000)
    finally:
        torch.set_num_threads(threads)
    assert not (tmp_path / "o.bedgraph").exists()  # nothing half-written


def test_a_truncated_gzip_fasta_is_an_error_naming_the_file_and_writes_nothing(tmp_path):
    """A gzip stream cut short fails where the reader meets it, with the file named (not a bare
    EOFError from the gzip module), and no output is left half-written."""
    data = gzip.compress((">c\n" + _genome(200_000, 4) + "\n").encode())
    fa = tmp_path / "cut.fa.gz"
    fa.write_bytes(data[: len(data) // 2])
    torch.manual_seed(0)
    model = DeepBind(num_motifs=4, motif_len=8, hidden=0).eval()
    with pytest.raises(InputError, match=r"cut\.fa\.gz: cannot read: Compressed file ended"):
        scan_fasta(model, fa, tmp_path / "o", window=50, stride=25, chunk=1000)
    assert not list(tmp_path.glob("o.*"))
