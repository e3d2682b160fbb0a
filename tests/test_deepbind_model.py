"""DeepBind model: strands, padding, training + evaluation via the CLI, calibration selection."""

import json

import numpy as np
import pytest
import torch
import yaml

from biocnn.cli import main
from biocnn.deepbind.config import DeepBindConfig
from biocnn.deepbind.model import DeepBind, reverse_complement_onehot
from biocnn.deepbind.search import calibrated_config, sample_trials, select_best
from biocnn.io.sequences import one_hot, reverse_complement
from biocnn.models import build_model
from biocnn.synthetic.sequences import write_demo_binding


def test_reverse_complement_of_one_hot_matches_string():
    seq = "AACGTTTGCAN"
    np.testing.assert_array_equal(
        reverse_complement_onehot(torch.from_numpy(one_hot(seq))[None])[0].numpy(), one_hot(reverse_complement(seq))
    )


def test_both_strands_give_the_same_score_and_the_max_of_each():
    torch.manual_seed(0)
    model = build_model({"name": "deepbind", "num_motifs": 4, "motif_len": 6, "hidden": 8}).eval()
    x = torch.from_numpy(np.stack([one_hot("ACGTAGGCTTAACGGA"), one_hot("TTTTGGGGCCAAATTA")]))
    rc = reverse_complement_onehot(x)
    torch.testing.assert_close(model(x), model(rc))
    torch.testing.assert_close(model(x), torch.maximum(model.strand_scores(x), model.strand_scores(rc)))
    single = DeepBind(num_motifs=4, motif_len=6, hidden=8, both_strands=False)
    single.load_state_dict(model.state_dict())
    torch.testing.assert_close(single.eval()(x), model.strand_scores(x))


def test_padding_lets_a_detector_see_a_motif_at_the_edge():
    model = DeepBind(num_motifs=1, motif_len=4, hidden=0, both_strands=False).eval()
    conv = model.motif_conv
    with torch.no_grad():
        conv.weight.copy_(torch.from_numpy(one_hot("GATC"))[None] * 1.0)
        conv.bias.fill_(0.0)
    acts = model.activations(torch.from_numpy(one_hot("TCAAAAAAGA"))[None])[0, 0]
    assert acts.shape[0] == 10 + 4 - 1
    # The right edge "GA" + two padding columns of 0.25 (0.25 * 2 for the missing TC).
    assert acts.max().item() == pytest.approx(2.5)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    return write_demo_binding(out, seed=1, n_train=300, n_test=100, motif="MA0139", genome_bp=20_000)


def _config(path, demo, **calibration):
    cfg = {
        "data": {"train": str(demo["train"]), "test": str(demo["test"]), "negatives_per_positive": 1},
        "model": {"num_motifs": 8, "motif_len": 16, "hidden": 0},
        "train": {
            "epochs": 6,
            "batch_size": 32,
            "lr": 0.01,
            "progress": False,
            "device": "cpu",
            "seed": 3,
            "early_stopping": {"monitor": "val_auc", "mode": "max", "patience": 6},
        },
        "calibration": {"trials": 2, "folds": 2, "epochs": 2, **calibration},
    }
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_train_and_evaluate_cli_learns_a_planted_motif(tmp_path, demo):
    cfg = _config(tmp_path / "cfg.yaml", demo)
    model_dir = tmp_path / "model"
    assert main(["deepbind", "train", "--config", str(cfg), "--out", str(model_dir)]) == 0
    config = json.loads((model_dir / "config.json").read_text())
    assert config["provenance"]["seed"] == 3 and config["model"]["name"] == "deepbind"
    assert json.loads((model_dir / "metrics.json").read_text())["n_train"] > 0
    out = tmp_path / "metrics.json"
    assert (
        main(["deepbind", "evaluate", "--model", str(model_dir), "--test", str(demo["test"]), "--out", str(out)]) == 0
    )
    metrics = json.loads(out.read_text())
    assert metrics["roc_auc"] > 0.9
    # PR AUC (average precision) is the saved model's on the test set, recomputed here, and well
    # above the 0.5 of a random ranking of this balanced set.
    from sklearn.metrics import average_precision_score

    from biocnn.checkpoint import load_model
    from biocnn.deepbind.data import labelled, read_set
    from biocnn.predict import batched, predict

    model, saved = load_model(model_dir)
    test = labelled(
        read_set(demo["test"], saved["model"]["motif_len"]), saved["data"].get("negatives_per_positive", 1), 0
    )
    x, y = test.tensors()
    assert metrics["n"] == len(y)
    expected = average_precision_score(y.numpy(), predict(model, batched(x, 512)).numpy())
    assert metrics["pr_auc"] == pytest.approx(expected, abs=1e-9) and metrics["pr_auc"] > 0.85
    assert metrics["n_positive"] == metrics["n_negative"] == 100
    # Same config and seed: the same weights, hence the same numbers.
    again = tmp_path / "again"
    assert main(["deepbind", "train", "--config", str(cfg), "--out", str(again), "--train", str(demo["train"])]) == 0
    out2 = tmp_path / "metrics2.json"
    main(["deepbind", "evaluate", "--model", str(again), "--test", str(demo["test"]), "--out", str(out2)])
    assert json.loads(out2.read_text())["roc_auc"] == metrics["roc_auc"]


def test_calibration_trials_select_and_retrain(tmp_path, demo):
    cfg = _config(tmp_path / "cfg.yaml", demo, max_train=120)
    cal = tmp_path / "cal"
    for trial in (0, 1):
        assert main(["deepbind", "calibrate", "--config", str(cfg), "--out", str(cal), "--trial", str(trial)]) == 0
    assert main(["deepbind", "calibrate", "--config", str(cfg), "--out", str(cal), "--select"]) == 0
    best = json.loads((cal / "best.json").read_text())
    trials = [json.loads((cal / f"trial-{i:03d}.json").read_text()) for i in (0, 1)]
    assert best["trial"] == max(trials, key=lambda t: t["mean_auc"])["trial"]
    assert len(trials[0]["fold_aucs"]) == 2
    model_dir = tmp_path / "final"
    assert (
        main(
            [
                "deepbind",
                "train",
                "--config",
                str(cfg),
                "--out",
                str(model_dir),
                "--calibration",
                str(cal / "best.json"),
            ]
        )
        == 0
    )
    saved = json.loads((model_dir / "config.json").read_text())
    assert saved["calibration"]["trial"] == best["trial"]
    assert saved["model"]["hidden"] == best["params"]["hidden"]
    assert saved["data"]["val_fraction"] == 0.0  # retrained on all the training data


def test_select_best_prefers_highest_mean_auc_and_trial0_is_the_config():
    results = [
        {"trial": 0, "mean_auc": 0.8},
        {"trial": 1, "mean_auc": 0.9},
        {"trial": 2, "mean_auc": float("nan")},
        {"trial": 3, "mean_auc": 0.9},
    ]
    best = select_best(results)
    assert best["trial"] == 1 and [r["trial"] for r in best["ranking"]][:2] == [1, 3]
    cfg = DeepBindConfig(calibration={"trials": 4, "space": {"hidden": [0, 32], "num_motifs": [8, 16]}})
    trials = sample_trials(cfg)
    assert trials == sample_trials(cfg)  # seeded: a cluster job draws the same trial
    assert trials[0]["lr"] == cfg.train.lr and trials[0]["num_motifs"] == cfg.model.num_motifs
    final = calibrated_config(cfg, {"params": trials[2], "epochs": 5})
    assert final.train.epochs == 5 and final.train.early_stopping.monitor == "train_loss"


def test_bad_input_is_one_line_error(tmp_path, demo, capsys):
    cfg = _config(tmp_path / "cfg.yaml", demo)
    bad = tmp_path / "bad.fa"
    bad.write_text(">x\nACGTACGTACGTACGTACGTZ\n")
    assert main(["deepbind", "train", "--config", str(cfg), "--out", str(tmp_path / "m"), "--train", str(bad)]) == 1
    assert "bad.fa: record 'x': invalid character 'Z' at position 21" in capsys.readouterr().err


def test_demo_data_is_byte_identical_for_the_same_seed(tmp_path):
    """Same seed, same bytes: the data hash every model records must not depend on when or
    under which temporary name a file was written (gzip headers carry both by default)."""
    runs = [write_demo_binding(tmp_path / f"run{i}", seed=3, n_train=40, n_test=20, genome_bp=20_000) for i in (0, 1)]
    for name in runs[0]:
        assert runs[0][name].read_bytes() == runs[1][name].read_bytes(), name


@pytest.mark.parametrize("pool", ["max", "maxavg"])
def test_merged_ensemble_scores_the_mean_of_its_members_on_each_strand(pool):
    from biocnn.deepbind.model import merge

    torch.manual_seed(0)
    members = [DeepBind(4, 6, pool, hidden, 0.0, 0.2).eval() for hidden in (0, 8, 0)]
    merged = merge(members)
    x = torch.from_numpy(np.stack([one_hot("ACGTAGGCTTAACGGANNAC"), one_hot("TTTTGGGGCCAAATTAGCGC")]))
    for strand in (x, reverse_complement_onehot(x)):
        mean = torch.stack([m.strand_scores(strand) for m in members]).mean(0)
        torch.testing.assert_close(merged.strand_scores(strand), mean, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="share motif_len"):
        merge([members[0], DeepBind(4, 8, pool, 0)])


def test_an_ensemble_trains_its_members_and_saves_one_loadable_model(tmp_path):
    from biocnn.checkpoint import load_model
    from biocnn.config import TrainConfig
    from biocnn.deepbind.config import ModelSection
    from biocnn.deepbind.data import LabelledSequences
    from biocnn.deepbind.train import train_deepbind

    rng = np.random.default_rng(0)
    seqs = ["".join(rng.choice(list("ACGT"), 30)) for _ in range(64)]
    seqs = [s[:10] + "GGGCGGGG" + s[18:] if i % 2 else s for i, s in enumerate(seqs)]
    data = LabelledSequences([str(i) for i in range(64)], seqs, np.arange(64, dtype=np.float32) % 2, "mem")
    cfg = TrainConfig(epochs=2, batch_size=16, lr=0.01, progress=False, device="cpu")
    model, result = train_deepbind(
        data, data, ModelSection(num_motifs=3, motif_len=6, hidden=4, ensemble=2), cfg, tmp_path
    )
    assert {row["member"] for row in result.history} == {0, 1} and "val_auc" in result.best_metrics
    loaded, config = load_model(tmp_path)
    assert config["model"]["num_motifs"] == 6 and config["model"]["hidden"] == 8
    x = torch.from_numpy(np.stack([one_hot(s) for s in seqs[:8]]))
    torch.testing.assert_close(loaded(x), model(x))


def test_a_cpu_budget_ends_training_early_and_keeps_a_model(tmp_path):
    from biocnn.checkpoint import load_model
    from biocnn.config import TrainConfig
    from biocnn.deepbind.config import ModelSection
    from biocnn.deepbind.data import LabelledSequences
    from biocnn.deepbind.train import train_deepbind

    rng = np.random.default_rng(1)
    seqs = ["".join(rng.choice(list("ACGT"), 30)) for _ in range(64)]
    data = LabelledSequences([str(i) for i in range(64)], seqs, np.arange(64, dtype=np.float32) % 2, "mem")
    cfg = TrainConfig(epochs=5, batch_size=16, lr=0.01, progress=False, device="cpu")
    # A budget no epoch fits: the first epoch runs (it measures the cost), then training ends.
    model, result = train_deepbind(
        data, data, ModelSection(num_motifs=3, motif_len=6, hidden=4), cfg, tmp_path, cpu_budget_s=1e-9
    )
    assert result.stopped == "cpu_budget" and [row["epoch"] for row in result.history] == [1]
    assert json.loads((tmp_path / "metrics.json").read_text())["stopped"] == "cpu_budget"
    loaded, _ = load_model(tmp_path)
    x = torch.from_numpy(np.stack([one_hot(s) for s in seqs[:8]]))
    torch.testing.assert_close(loaded(x), model(x))
