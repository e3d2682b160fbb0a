"""The published DeepBind models: import, the original tool's scoring rule, predict.

The release's files live in ``../shared/data/deepbind`` beside the repository (never copied
into it); every test here is skipped when they are absent.
"""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from biocnn.checkpoint import load_model, save_model
from biocnn.cli import main
from biocnn.deepbind import original, zoo
from biocnn.deepbind.model import DeepBind, reverse_complement_onehot
from biocnn.errors import InputError
from biocnn.io.dna import one_hot

DEEPBIND = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "deepbind"
DB = DEEPBIND / "db"
EXAMPLES = DEEPBIND / "examples"
pytestmark = pytest.mark.skipif(
    not (DB / "db.tsv").is_file(), reason=f"the DeepBind release is not at {DEEPBIND} (shared data absent)"
)
TOLERANCE = 1e-5


def _table(path: Path) -> tuple[list[str], np.ndarray]:
    rows = [line.rstrip("\n").split("\t") for line in path.open() if not line.startswith("#") and line.strip()]
    return rows[0], np.array(rows[1:], dtype=float)


def _max_error(ours: Path, reference: Path) -> float:
    names, scores = _table(ours)
    ref_names, ref_scores = _table(reference)
    assert sorted(names) == sorted(ref_names)
    return float(np.abs(scores[:, [names.index(n) for n in ref_names]] - ref_scores).max())


@pytest.fixture(scope="module")
def zoo_dir(tmp_path_factory):
    """All 927 published models, imported once through the command line."""
    out = tmp_path_factory.mktemp("zoo")
    assert main(["deepbind", "import", "--db", str(DB), "--out", str(out)]) == 0
    return out


def test_import_writes_every_model_with_provenance(zoo_dir):
    dirs = sorted(p.name for p in zoo_dir.iterdir())
    assert len(dirs) == 927 and not any(name.startswith(".") for name in dirs)
    config = json.loads((zoo_dir / "D00650.007" / "config.json").read_text())
    assert config["deepbind"]["protein"] == "SP1" and config["deepbind"]["experiment"] == "ChIP-seq"
    assert "Lab=HudsonAlpha" in config["deepbind"]["experiment_details"]
    assert config["provenance"]["source_sha256"] == zoo.sha256(DB / "params" / "D00650.007.txt")
    assert "Alipanahi" in config["provenance"]["citation"]
    assert config["scoring"] == {"rule": "original", "window_size": None, "average": False}
    model, _ = load_model(zoo_dir / "D00650.007")
    assert isinstance(model, DeepBind) and model.both_strands


@pytest.mark.parametrize("mode", ["max", "average"])
def test_predict_reproduces_the_original_tool_on_all_927_models(zoo_dir, tmp_path, mode):
    out = tmp_path / f"{mode}.tsv"
    args = [
        "deepbind",
        "predict",
        "--model",
        str(zoo_dir),
        "--sequences",
        str(EXAMPLES / "golden_inputs.seq"),
        "--out",
        str(out),
    ] + (["--average"] if mode == "average" else [])
    assert main(args) == 0
    assert _max_error(out, EXAMPLES / f"golden_tool_v0.11_{mode}.tsv") < TOLERANCE


def test_predict_reproduces_the_release_example_in_the_given_model_order(zoo_dir, tmp_path):
    ids = [line.split("#")[0].strip() for line in (EXAMPLES / "v0.11_example.ids").read_text().splitlines()]
    out = tmp_path / "example.tsv"
    args = ["deepbind", "predict", "--sequences", str(EXAMPLES / "v0.11_example.seq"), "--out", str(out)]
    for model_id in ids:
        args += ["--model", str(zoo_dir / model_id)]
    assert main(args) == 0
    names, _ = _table(out)
    assert names == ids
    assert _max_error(out, EXAMPLES / "expected_v0.11.tsv") < TOLERANCE
    assert out.read_text().splitlines()[1].split("\t")[0] == "7.451420"


def test_rna_model_reads_u_as_t_and_scores_one_strand(zoo_dir):
    model, config = load_model(zoo_dir / "D00210.001")  # RBFOX1, RNAcompete
    assert not model.both_strands
    rna = "AGGUAAUAAUUUGCAUGAAAUAACUUGGAGAGGAUAGC"
    dna = rna.replace("U", "T")
    rc = dna[::-1].translate(str.maketrans("ACGT", "TGCA"))
    scoring = original.Scoring.from_config(config)
    scores = original.score_models([model], [original.encode(s) for s in (rna, dna.lower(), rc)], scoring)[:, 0]
    assert scores[0] == pytest.approx(7.451420, abs=TOLERANCE) and scores[1] == scores[0]
    assert scores[2] < 0  # the other strand does not bind: only the given strand counts
    dna_model, dna_config = load_model(zoo_dir / "D00328.003")  # CTCF, both strands
    both = original.score_models(
        [dna_model], [original.encode(s) for s in (dna, rc)], original.Scoring.from_config(dna_config)
    )[:, 0]
    assert both[0] == both[1]


def _small_db(tmp_path: Path, ids: list[str]) -> Path:
    """A release folder with db.tsv and the parameter files of ``ids`` (temporary, for editing)."""
    db = tmp_path / "db"
    (db / "params").mkdir(parents=True)
    shutil.copy(DB / "db.tsv", db / "db.tsv")
    for model_id in ids:
        shutil.copy(DB / "params" / f"{model_id}.txt", db / "params" / f"{model_id}.txt")
    return db


def test_a_broken_parameter_file_is_named_with_its_field_and_the_import_goes_on(tmp_path, capsys):
    db = _small_db(tmp_path, ["D00210.001", "D00650.007", "D00328.003"])
    bad = db / "params" / "D00650.007.txt"
    lines = bad.read_text().splitlines()
    bad.write_text("\n".join(line.rsplit(",", 1)[0] if line.startswith("detectors") else line for line in lines))
    with pytest.raises(InputError) as exc:
        zoo.parse_params(bad)
    message = str(exc.value)
    assert "\n" not in message and "D00650.007.txt" in message
    assert "field 'detectors': expected 1536 values" in message and "got 1535" in message
    (db / "params" / "D00328.003.txt").write_text(
        (DB / "params" / "D00328.003.txt").read_text().replace("num_hidden = ", "num_hidden = x")
    )
    out = tmp_path / "zoo"
    code = main(
        [
            "deepbind",
            "import",
            "--db",
            str(db),
            "--out",
            str(out),
            "--ids",
            "D00210.001",
            "D00650.007",
            "D00328.003",
            "D99999.001",
        ]
    )
    printed = capsys.readouterr().out
    assert code == 1
    assert "4 models seen: 1 written" in printed and "3 failed" in printed
    assert "D00650.007: " in printed and "field 'detectors'" in printed
    assert "D00328.003: " in printed and "field 'num_hidden'" in printed
    assert "D99999.001: not in db.tsv" in printed
    assert sorted(p.name for p in out.iterdir()) == ["D00210.001"]


def test_selection_by_id_protein_and_experiment(tmp_path):
    index = zoo.read_index(DB)
    chosen, _ = zoo.select(index, proteins=["sp1"], experiments=["ChIP-seq"])
    expected = [i for i, e in index.items() if e.protein == "SP1" and e.experiment == "ChIP-seq" and not e.labels]
    assert chosen == expected and "D00650.007" in chosen
    out = tmp_path / "zoo"
    assert (
        main(["deepbind", "import", "--db", str(DB), "--out", str(out), "--protein", "CTCF", "--experiment", "SELEX"])
        == 0
    )
    written = sorted(p.name for p in out.iterdir())
    assert written == sorted(
        i for i, e in index.items() if e.protein == "CTCF" and e.experiment == "SELEX" and not e.labels
    )
    chosen, problems = zoo.select(index, ids=["D00210.001", "D00650.007"], experiments=["RNAcompete"])
    assert chosen == ["D00210.001"] and not problems
    deprecated = next(i for i, e in index.items() if e.deprecated)
    assert "no parameter file" in zoo.select(index, ids=[deprecated])[1][0][1]


def test_original_rule_matches_the_model_on_each_padded_window(tmp_path):
    """The stacked float64 rule equals the torch model run window by window (biocnn's own model)."""
    torch.manual_seed(0)
    model = DeepBind(num_motifs=4, motif_len=6, pool="maxavg", hidden=8).eval()
    model_dir = save_model(
        tmp_path / "own",
        model,
        {"model": {"name": "deepbind", "num_motifs": 4, "motif_len": 6, "pool": "maxavg", "hidden": 8}},
    )
    rng = np.random.default_rng(0)
    seqs = ["".join(rng.choice(list("ACGTN"), n)) for n in (3, 9, 25, 40)]
    window = 9

    def strands(seq):  # each window's score on the given strand and on the reverse complement
        x = torch.from_numpy(np.stack([one_hot(seq[i : i + window]) for i in range(max(1, len(seq) - window + 1))]))
        with torch.no_grad():
            return model.strand_scores(x).numpy(), model.strand_scores(reverse_complement_onehot(x)).numpy()

    by_window = [strands(s) for s in seqs]
    with torch.no_grad():
        whole = [model(torch.from_numpy(one_hot(s))[None]).item() for s in seqs]
    # The tool reduces each strand's windows (max, or sum / n for more than one window), then keeps the larger.
    best = [max(f.max(), r.max()) for f, r in by_window]
    mean = [max(f.sum(), r.sum()) / (len(s) if len(f) > 1 else 1) for (f, r), s in zip(by_window, seqs)]
    fasta = tmp_path / "seqs.fa"
    fasta.write_text("".join(f">s{i}\n{s}\n" for i, s in enumerate(seqs)))
    for args, expected in (
        ([], whole),
        (["--rule", "original", "--window-size", str(window)], best),
        (["--window-size", str(window), "--average"], mean),
    ):
        out = tmp_path / "scores.tsv"
        assert (
            main(
                ["deepbind", "predict", "--model", str(model_dir), "--sequences", str(fasta), "--out", str(out)] + args
            )
            == 0
        )
        names, scores = _table(out)
        assert names == ["own"]
        np.testing.assert_allclose(scores[:, 0], expected, atol=1e-5)
    # Windows narrower than a detector, and many stacked models, take the other paths.
    codes = [original.encode(s) for s in seqs]
    narrow = original.score_models([model], codes, original.Scoring(window_size=4))[:, 0]
    with torch.no_grad():
        manual = [
            max(model(torch.from_numpy(one_hot(s[i : i + 4]))[None]).item() for i in range(max(1, len(s) - 3)))
            for s in seqs
        ]
    np.testing.assert_allclose(narrow, manual, atol=1e-5)
    many = original.score_models([model] * 3, codes, original.Scoring(window_size=window))
    np.testing.assert_allclose(many, np.repeat(many[:, :1], 3, axis=1), atol=1e-12)
    np.testing.assert_allclose(many[:, 0], best, atol=1e-5)


def test_evaluate_runs_on_an_imported_model(zoo_dir, tmp_path):
    table = tmp_path / "test.tsv"
    seqs = [line.strip() for line in (EXAMPLES / "golden_inputs.seq").read_text().splitlines()]
    dna = [s.upper().replace("U", "T") for s in seqs if len(s) >= 24]
    rows = [f"A\tseq{i}\t{s}\t{i % 2}" for i, s in enumerate(dna)]
    table.write_text("FoldID\tEventID\tseq\tBound\n" + "\n".join(rows) + "\n")
    out = tmp_path / "metrics.json"
    assert (
        main(["deepbind", "evaluate", "--model", str(zoo_dir / "D00650.007"), "--test", str(table), "--out", str(out)])
        == 0
    )
    metrics = json.loads(out.read_text())
    assert 0 <= metrics["roc_auc"] <= 1 and metrics["scoring"]["rule"] == "original"
