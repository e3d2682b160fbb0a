"""Genome scan internals: the C kernels against the model, the block FASTA reader, bedGraph output."""

import gzip
import subprocess

import numpy as np
import pytest
import torch
from Bio import SeqIO

from biocnn.deepbind import scan as scan_module
from biocnn.deepbind.model import DeepBind
from biocnn.deepbind.scan import WindowScorer, scan_fasta
from biocnn.deepbind.tracks import TrackWriter
from biocnn.io import fasta_stream
from biocnn.io.fasta_stream import stream_records
from biocnn.errors import InputError
from biocnn.io.sequences import codes, one_hot


def _genome(n, seed):
    """Random ACGT with a long N run, scattered IUPAC codes and lowercase (as in real assemblies)."""
    rng = np.random.default_rng(seed)
    seq = rng.choice(list("ACGT"), size=n)
    seq[n // 3:n // 3 + 300] = "N"
    seq[rng.choice(n, size=n // 200, replace=False)] = rng.choice(list("NRYSWKMBDHV"), size=n // 200)
    low = rng.choice(n, size=n // 10, replace=False)
    seq[low] = np.char.lower(seq[low])
    return "".join(seq)


@pytest.mark.parametrize("motifs,motif_len,window,stride,pool,hidden", [
    (16, 24, 101, 50, "max", 32),  # the default DeepBind model and scan: 32 channels, 6 look-ups a position
    (16, 24, 101, 50, "maxavg", 32),
    (5, 7, 30, 40, "maxavg", 0),  # stride > window: gaps between windows; 10 channels padded to 16
    (24, 11, 60, 7, "max", 8),  # 48 channels; windows overlap by many strides
    # fused edges (stride >= motif_len - 1) where a base's left- and right-edge pieces overlap by 7
    # columns, or leave a gap of 5 between them, at bases inside windows (the default: overlap of 1)
    (6, 9, 15, 8, "maxavg", 16),
    (6, 8, 19, 12, "maxavg", 0),
])
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
    assert len(got) == len(starts) > 2 * scan_module._NATIVE_BLOCK
    with torch.no_grad():
        expected = model(torch.stack([x[:, a:a + window] for a in starts]))
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_stream_records_reads_blocks_gzip_and_crlf_like_biopython(tmp_path, monkeypatch):
    monkeypatch.setattr(fasta_stream, "_READ_BLOCK", 7)  # every header and line break straddles reads
    records = [("chr1", _genome(500, 1)), ("chr2 second record", "ACGTN" * 3), ("empty", ""), ("chrM", _genome(130, 2))]
    text = "".join(f">{name}\r\n" + "\r\n".join(seq[i:i + 61] for i in range(0, len(seq), 61)) + "\r\n"
                   for name, seq in records)
    plain, gz = tmp_path / "g.fa", tmp_path / "g.fa.gz"
    plain.write_bytes(text.encode())
    gz.write_bytes(gzip.compress(text.encode()))
    expected = [(r.id, str(r.seq)) for r in SeqIO.parse(plain, "fasta")]
    for path in (plain, gz):
        got = [(name, b"".join(pieces).decode()) for name, pieces in stream_records(path)]
        assert got == expected
    skipped = [name for name, _ in stream_records(plain)]  # pieces not read are skipped
    assert skipped == ["chr1", "chr2", "empty", "chrM"]


def test_bedgraph_from_the_c_formatter_equals_python_formatting(tmp_path):
    from biocnn.deepbind import native

    lib = native.load()
    assert lib is not None
    # Halfway cases (rounded to even, as Python does), negative zero, small negatives, large values.
    values = np.array([0.0, -0.0, 0.00005, 0.00015, -0.00004, 1.23456, -7.77775, 123456.5, 2.5e-5, 1e-9, 0.99995,
                       9.99999e13, -3e14, 1e20, -3.4e38, np.inf, -np.inf, np.nan,
                       *np.random.default_rng(0).normal(0, 3, 500)], np.float32)
    starts = np.arange(len(values), dtype=np.int64) * 7_777_777  # 1 to 10 digits
    for chrom in ("chrUn_KI270302v1", "a_record_name_longer_than_32_characters"):  # both copy paths
        out = {}
        for name, lib_ in (("c", lib), ("python", None)):
            with open(tmp_path / name, "wb") as fh:
                TrackWriter(fh, None, 101, 50, float("inf"), lib_).windows(chrom, starts, values)
            out[name] = (tmp_path / name).read_bytes()
        assert out["c"] == out["python"]
        assert out["c"].count(b"\n") == len(values)


def test_scan_backends_agree_and_invalid_character_names_its_position(tmp_path):
    torch.manual_seed(0)
    model = DeepBind(num_motifs=6, motif_len=10, hidden=4).eval()
    seq = _genome(5000, 9)
    fa = tmp_path / "g.fa.gz"
    fa.write_bytes(gzip.compress((">chrA\n" + "\n".join(seq[i:i + 80] for i in range(0, 5000, 80)) + "\n").encode()))
    rows = {}
    for backend in ("native", "torch"):
        stats = scan_fasta(model, fa, tmp_path / backend, window=50, stride=25, chunk=600, backend=backend)
        assert stats["backend"] == backend and stats["windows"] == (5000 - 50) // 25 + 1
        rows[backend] = np.array([[float(v) for v in line.split("\t")[1:]]
                                  for line in (tmp_path / f"{backend}.bedgraph").read_text().splitlines()])
    assert rows["native"].shape == rows["torch"].shape
    np.testing.assert_array_equal(rows["native"][:, :2], rows["torch"][:, :2])  # batches written in order
    np.testing.assert_allclose(rows["native"][:, 2], rows["torch"][:, 2], atol=2e-4)

    bad = tmp_path / "bad.fa"
    bad.write_text(">chrA\n" + seq[:3000] + "\n" + seq[3000:4321] + "X" + seq[4322:] + "\n")
    with pytest.raises(InputError, match=r"'chrA'.*invalid character 'X' at position 4322"):
        scan_fasta(model, bad, tmp_path / "bad", window=50, stride=25, chunk=600)


def test_models_wider_than_the_c_kernel_fall_back_to_numba_and_stay_exact():
    torch.manual_seed(2)
    model = DeepBind(num_motifs=130, motif_len=6, hidden=4).eval()  # 260 channels > MAX_CHANNELS
    scorer = WindowScorer(model, 30, 10)
    assert scorer.backend == "lookup"
    seq = _genome(200, 5)
    x = torch.from_numpy(one_hot(seq))
    with torch.no_grad():
        expected = model(torch.stack([x[:, a:a + 30] for a in range(0, 200 - 30 + 1, 10)]))
    torch.testing.assert_close(scorer.score(codes(seq)), expected, atol=1e-5, rtol=1e-5)


def test_c_encoder_matches_the_code_table_and_finds_the_first_invalid_byte():
    """The encoder's vector path (64 bases per step) and its scalar tail give the table's codes,
    and report the first invalid byte wherever it falls, non-ASCII bytes included."""
    from biocnn.deepbind import native
    from biocnn.io.fasta_stream import chunk_codes
    from biocnn.io.sequences import _CODES

    lib = native.load()
    if lib is None:
        pytest.skip("no C compiler")
    raw = np.random.default_rng(3).choice(np.frombuffer(b"ACGTNacgtnRYKMSWBDHV", np.uint8), 1000).tobytes()
    np.testing.assert_array_equal(chunk_codes(raw, "r", "f", 0, lib), _CODES[np.frombuffer(raw, np.uint8)])
    for pos in (0, 63, 64, 700, 999):  # first / last byte of a vector step, the scalar tail
        for char in (b"X", b"-", b"\xc3"):
            bad = raw[:pos] + char + raw[pos + 1:] + b"!"  # a later invalid byte must not be reported
            with pytest.raises(InputError, match=rf"invalid character .* at position {pos + 1}$"):
                chunk_codes(bad, "r", "f", 0, lib)


def test_kernels_without_avx512_give_the_same_scores(tmp_path):
    """Built without AVX-512 the kernels use 8-lane vectors (AVX2 registers) and, without AVX, the
    generic vector code: both still equal the model on every window, max and max+avg pooling
    (this machine otherwise only ever compiles the 16-lane path)."""
    import platform

    from biocnn.deepbind import native

    if native.load() is None or platform.machine() not in ("x86_64", "AMD64"):
        pytest.skip("needs a C compiler on x86-64")
    seq = _genome(8000, 6)
    x = torch.from_numpy(one_hot(seq))
    windows = torch.stack([x[:, a:a + 101] for a in range(0, len(seq) - 101 + 1, 50)])
    for name, flags in (("avx2", ("-mno-avx512f",)), ("generic", ("-mno-avx", "-mno-avx2", "-mno-fma",
                                                                  "-mno-avx512f"))):
        try:
            lib = native.build(tmp_path / f"{name}.so", flags)
        except subprocess.CalledProcessError as err:
            pytest.fail(f"{name} build failed: {err.stderr.decode()[-500:]}")
        for pool in ("max", "maxavg"):
            torch.manual_seed(5)
            model = DeepBind(num_motifs=16, motif_len=24, pool=pool, hidden=32).eval()
            with torch.no_grad():
                expected = model(windows)
            scorer = WindowScorer(model, 101, 50, backend="native")
            scorer.lib = lib
            torch.testing.assert_close(scorer.score(codes(seq)), expected, atol=1e-5, rtol=1e-5)


def test_scan_output_is_the_same_with_one_or_two_threads(tmp_path):
    """Two threads score batches in parallel (one each); the files must not change by a byte:
    records of all lengths (empty, shorter than the motif, shorter than a window), N runs,
    IUPAC codes and lowercase, many batches per record."""
    torch.manual_seed(1)
    model = DeepBind(num_motifs=4, motif_len=9, hidden=8).eval()
    records = [_genome(n, 7 + n) if n else "" for n in (9000, 5, 0, 40, 6100)]
    fa = tmp_path / "multi.fa"
    fa.write_text("".join(f">r{i}\n" + "\n".join(s[j:j + 70] for j in range(0, len(s), 70)) + "\n"
                          for i, s in enumerate(records)))
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
    assert (tmp_path / "t1.bedgraph").read_text().count("\n") == stats["windows"] > 700


def test_record_batches_match_slices_of_the_whole_record_for_any_piece_split():
    """Batches assembled from pieces (views inside one piece, joins across pieces) equal slices
    of the joined record, for overlapping (step < take) and gapped (step > take) batches."""
    from biocnn.deepbind.scan import record_batches

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
            expected.append((seq[o:o + take], o, False))
            o += step
        assert got == [*expected, (seq[o:], o, True)]


@pytest.mark.parametrize("read_block", [200, 417, 611])
def test_windows_farther_apart_than_a_window_score_the_right_bases(tmp_path, monkeypatch, read_block):
    """stride > window: the bases between windows are skipped across read blocks (a batch's last
    step used to reach past the buffered bases and shift every later window)."""
    monkeypatch.setattr(fasta_stream, "_READ_BLOCK", read_block)
    torch.manual_seed(0)
    model = DeepBind(num_motifs=4, motif_len=8, hidden=0).eval()
    seq = _genome(3000, 1)
    fa = tmp_path / "g.fa"
    fa.write_text(">c\n" + "\n".join(seq[i:i + 60] for i in range(0, 3000, 60)) + "\n")
    scan_fasta(model, fa, tmp_path / "o", window=30, stride=70, chunk=200)
    rows = [line.split("\t") for line in (tmp_path / "o.bedgraph").read_text().splitlines()]
    assert [int(r[1]) for r in rows] == list(range(0, 3000 - 30 + 1, 70))
    x = torch.from_numpy(np.stack([one_hot(seq[int(r[1]):int(r[1]) + 30]) for r in rows])).float()
    with torch.no_grad():
        expected = model(x).numpy()
    np.testing.assert_allclose([float(r[3]) for r in rows], expected, atol=1e-4)


def test_jobs_read_ahead_of_the_writing_stay_bounded(tmp_path, monkeypatch):
    """Workers read on while the writing lags, but never more than the pipeline's limit of jobs
    ahead of it: a FASTA of many records shorter than a window (one record-end job each, the
    record scored whole) with a slow writer cannot pile up jobs."""
    import time

    ahead = []
    write = scan_module._Pipeline._write

    def slow_write(self, *args):
        time.sleep(0.002)  # a writer slower than the readers
        ahead.append(self.next_read - self.next_write)
        write(self, *args)

    monkeypatch.setattr(scan_module._Pipeline, "_write", slow_write)
    torch.manual_seed(0)
    model = DeepBind(num_motifs=4, motif_len=8, hidden=0).eval()
    seq = _genome(6000, 3).replace("N", "A")
    fa = tmp_path / "short.fa"
    fa.write_text("".join(f">r{i}\n{seq[60 * i:60 * i + 60]}\n" for i in range(100)))
    stats = scan_fasta(model, fa, tmp_path / "o", window=101, stride=50)
    assert stats["windows"] == 100 == len((tmp_path / "o.bedgraph").read_text().splitlines())
    limit = 2 * max(2, torch.get_num_threads())
    assert len(ahead) == 100 and max(ahead) <= limit
    assert max(ahead) == limit  # the readers did run ahead (up to the limit) while the writer slept


def test_the_first_invalid_base_in_the_file_is_reported_whichever_batch_fails_first(tmp_path, monkeypatch):
    """Batches are scored in parallel; when two contain invalid characters, the error names the
    one earlier in the file even if the later batch fails first."""
    import time

    score_bases = WindowScorer.score_bases

    def slow_first(self, raw, record, source, offset=0, split=True):
        if offset == 0:
            time.sleep(0.2)  # the later batch fails first
        return score_bases(self, raw, record, source, offset, split)

    monkeypatch.setattr(WindowScorer, "score_bases", slow_first)
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
    """A gzip stream cut short fails where the reader meets it, with the file named (was a bare
    EOFError from the gzip module), and no output is left half-written."""
    data = gzip.compress((">c\n" + _genome(200_000, 4) + "\n").encode())
    fa = tmp_path / "cut.fa.gz"
    fa.write_bytes(data[: len(data) // 2])
    torch.manual_seed(0)
    model = DeepBind(num_motifs=4, motif_len=8, hidden=0).eval()
    with pytest.raises(InputError, match=r"cut\.fa\.gz: cannot read: Compressed file ended"):
        scan_fasta(model, fa, tmp_path / "o", window=50, stride=25, chunk=1000)
    assert not list(tmp_path.glob("o.*"))
