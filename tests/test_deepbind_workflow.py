"""A real (tiny) Snakemake run of the DeepBind workflow on generated data."""

import json

import numpy as np
import yaml
from sklearn.metrics import roc_auc_score
from workflow_helpers import REPO, run_workflow


def test_deepbind_workflow_runs_end_to_end(tmp_path):
    train_cfg = yaml.safe_load((REPO / "configs" / "deepbind_demo.yaml").read_text())
    train_cfg["model"].update(num_motifs=4, motif_len=12, hidden=0)
    train_cfg["train"].update(epochs=3, batch_size=32)
    train_cfg["calibration"].update(trials=2, folds=2, epochs=1)
    train_cfg["calibration"]["space"].update(num_motifs=[4], hidden=[0])
    (tmp_path / "deepbind.yaml").write_text(yaml.safe_dump(train_cfg))
    config = {
        "results": "results",
        "tasks": ["deepbind"],
        "deepbind": {
            "config": str(tmp_path / "deepbind.yaml"),
            "seed": 1,
            "demo": {"n_train": 150, "n_test": 40, "genome_bp": 20000},
            "scan": {"window": 60, "stride": 30, "threshold": 0.0},
            # A small JASPAR group keeps the Tomtom step quick (94 targets).
            "motifs": {"tax_group": "urochordates"},
            "experiments": {"CTCF": {"motif": "MA0139"}},
        },
    }
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(config))
    run = run_workflow(tmp_path, tmp_path / "tiny.yaml")
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    out = tmp_path / "results" / "deepbind"
    check_selection_and_metrics(out / "CTCF", n_trials=2)
    assert (out / "CTCF" / "motifs" / "motifs.meme").read_text().startswith("MEME version 4")
    assert (out / "CTCF" / "scan.bedgraph").stat().st_size > 0
    assert len((out / "CTCF" / "variants.tsv").read_text().splitlines()) > 1
    summary = json.loads((out / "report" / "summary.json").read_text())
    assert "CTCF" in summary["experiments"]
    assert (out / "report" / "auc.png").is_file() and (out / "report" / "CTCF_scan.png").is_file()
    assert list((tmp_path / "results" / "logs" / "deepbind" / "CTCF").glob("*.log"))


def check_selection_and_metrics(exp, n_trials):
    """The selected trial is the one with the best recorded mean AUC, the final model is trained
    with its parameters, and the reported test AUC is the model's, recomputed here with sklearn."""
    from biocnn.checkpoint import load_model
    from biocnn.deepbind.data import labelled, read_set
    from biocnn.predict import batched, predict

    trials = [json.loads(p.read_text()) for p in sorted((exp / "calibration").glob("trial-*.json"))]
    assert [t["trial"] for t in trials] == list(range(n_trials))  # one job per trial
    scores = [t["mean_auc"] for t in trials]
    assert len(set(scores)) == n_trials, scores  # distinct scores, so the choice below is tested
    best = json.loads((exp / "calibration" / "best.json").read_text())
    assert best["trial"] == int(np.argmax(scores)) and best["params"] == trials[best["trial"]]["params"]
    model, config = load_model(exp / "model")
    assert config["calibration"]["trial"] == best["trial"]
    for name in ("num_motifs", "hidden"):
        assert config["model"][name] == best["params"][name]
    metrics = json.loads((exp / "metrics.json").read_text())
    test = labelled(
        read_set(exp / "data" / "test.seq.gz", config["model"]["motif_len"]),
        config["data"].get("negatives_per_positive", 1),
        0,
    )  # the evaluate verb's default seed
    x, y = test.tensors()
    assert metrics["n"] == len(y) == 80
    # The tiny run here (one epoch, as its trials chose) does not learn the motif yet: the AUC is
    # checked for being the model's, not for its size (test_deepbind_model checks learning).
    assert metrics["roc_auc"] == roc_auc_score(y.numpy(), predict(model, batched(x, 512)).numpy())
