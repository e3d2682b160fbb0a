"""Genome scans and variant tables given hostile inputs (issue 22): the batch size never changes
the output, duplicate record names and N-only windows are not silently wrong."""

from __future__ import annotations

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
