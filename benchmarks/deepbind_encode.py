"""biocnn vs the published DeepBind model vs k-mer LR vs JASPAR PWM on ENCODE ChIP-seq sets.

For every ``*_AC.seq.gz`` in ``--data-dir`` (positives only; negatives are dinucleotide
shuffles, as in DeepBind) a biocnn model is searched (random search + k-fold CV on a subsample)
and trained (``model.ensemble`` members, merged) within a per-experiment CPU budget with the
settings of ``--config`` (default ``configs/deepbind_encode.yaml``), then tested on the
matching ``*_B.seq.gz``. In the same run, on the same data:

* the published DeepBind model of the set (the ENCODE ChIP-seq row of ``--db``'s ``db.tsv``
  matching the file name's TF, cell line, antibody and lab), imported with biocnn's import code
  and scored with the original tool's windowed rule;
* k-mer (k = 4..6) counts + logistic regression;
* the best JASPAR PWM (max log-odds over positions and both strands) for the TF named by
  the file's first token (pyjaspar's database; no training).

    python benchmarks/deepbind_encode.py --data-dir ../shared/data/encode --out encode.json

JSON: ``{TF: {"deepbind_auc", "published_auc", "published_id", "kmer_lr_auc", "pwm_auc",
"train_seconds", ...}, "mean": {...}}``.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

# Idle OpenMP threads sleep instead of spinning, so CPU time measures work, not waiting for a
# core on a busy machine (set before torch starts its thread pool).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from biocnn.deepbind.config import DeepBindConfig, load_deepbind_config
from biocnn.deepbind.data import labelled, read_set, split
from biocnn.deepbind.search import apply_params, run_trial, select_best
from biocnn.deepbind.train import auc_metrics, evaluate_model, train_deepbind
from biocnn.io.atomic import write_json
from biocnn.io.sequences import one_hot_batch

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = REPO / "configs" / "deepbind_encode.yaml"
DEFAULT_DB = REPO.parent / "shared" / "data" / "deepbind" / "db"


def train_within_budget(ac: Path, cfg: DeepBindConfig, budget_cpu_s: float):
    """Calibrate on a subsample, then train the best configuration (``model.ensemble`` members,
    merged into one model) on all the data until early stopping, ``train.epochs`` or the CPU
    budget, which covers calibration and training: a member stops before an epoch that would
    take it past its share and keeps its best epoch. CPU time (process time over all threads),
    not wall time, because other jobs on a shared machine stretch the wall clock."""
    start, cpu0 = time.perf_counter(), time.process_time()
    seed = cfg.train.seed
    seqs = read_set(ac, cfg.model.motif_len)
    cal_data = labelled(seqs, cfg.data.negatives_per_positive, cfg.calibration.seed, cfg.calibration.max_train)
    results = [run_trial(cfg, i, cal_data) for i in range(cfg.calibration.trials)]
    best = select_best(results)
    tuned = apply_params(cfg, best["params"])
    data = labelled(seqs, cfg.data.negatives_per_positive, seed)
    train, val = split(data, cfg.data.val_fraction, seed)
    left = budget_cpu_s - (time.process_time() - cpu0)
    model, result = train_deepbind(train, val, tuned.model, tuned.train, cpu_budget_s=left)
    return model, {
        "seconds": time.perf_counter() - start,
        "cpu_seconds": time.process_time() - cpu0,
        "epochs": len(result.history),
        "members": len({row.get("member", 0) for row in result.history}),
        "val_auc": result.best_metrics.get("val_auc"),
        "calibration": best,
        "n_train": len(train),
    }


def published_auc(db: Path, set_name: str, test) -> tuple[float, str]:
    """AUC of the published DeepBind model for this set (matched in ``db.tsv`` by TF, cell line,
    antibody and lab), imported by ``biocnn deepbind import``'s code and scored with the original
    tool's windowed rule (its ``config.json`` says so)."""
    from biocnn.checkpoint import load_model
    from biocnn.deepbind.original import Scoring, evaluate_rule
    from biocnn.deepbind.zoo import chipseq_model, import_models, read_index

    model_id = chipseq_model(read_index(db), set_name)
    with tempfile.TemporaryDirectory() as tmp:
        result = import_models(db, tmp, ids=[model_id])
        if result.failures:
            raise RuntimeError(f"import of {model_id} failed: {result.failures[0][1]}")
        model, config = load_model(Path(tmp) / model_id, expect="deepbind")
    return evaluate_rule(model, test, Scoring.from_config(config))["roc_auc"], model_id


def kmer_lr_auc(train_seqs, train_y, test_seqs, test_y) -> float:
    """k-mer (4..6) counts + logistic regression (sparse features, L2)."""
    from sklearn.feature_extraction.text import CountVectorizer
    from sklearn.linear_model import LogisticRegression

    vec = CountVectorizer(analyzer="char", ngram_range=(4, 6), lowercase=True, dtype=np.float32)
    x_train = vec.fit_transform(train_seqs)
    clf = LogisticRegression(max_iter=2000, C=0.1)
    clf.fit(x_train, train_y)
    return auc_metrics(test_y, clf.decision_function(vec.transform(test_seqs)))["roc_auc"]


def pwm_auc(tf: str, test_seqs, test_y) -> tuple[float, str]:
    """Best AUC over the JASPAR matrices named ``tf``: max log-odds over positions, both strands."""
    from pyjaspar import jaspardb

    motifs = jaspardb().fetch_motifs_by_name(tf)
    if not motifs:
        return float("nan"), "none"
    x = torch.from_numpy(one_hot_batch(test_seqs))
    best, best_id = -1.0, ""
    for m in motifs:
        counts = np.array([m.counts[b] for b in "ACGT"], dtype=np.float64) + 0.8  # pseudocount
        prob = counts / counts.sum(0, keepdims=True)
        w = torch.from_numpy(np.log2(prob / 0.25)).float()[None]  # (1, 4, L)
        w = torch.cat([w, w.flip(1).flip(2)])  # both strands
        scores = torch.nn.functional.conv1d(x, w).amax(dim=(1, 2)).numpy()
        auc = auc_metrics(test_y, scores)["roc_auc"]
        if auc > best:
            best, best_id = auc, f"{m.matrix_id} {m.name}"
    return best, best_id


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--config", default=str(DEFAULT_CONFIG), help="DeepBind training config (YAML)")
    parser.add_argument("--db", default=str(DEFAULT_DB), help="the DeepBind release's db/ (db.tsv + params/)")
    parser.add_argument(
        "--budget",
        type=float,
        default=280.0,
        help="CPU seconds per experiment (calibration + training), all threads counted",
    )
    parser.add_argument("--only", nargs="*", help="TF names to run (default: all)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(2)

    sets = sorted(Path(args.data_dir).glob("*_AC.seq.gz"))
    if not sets:
        print(f"no *_AC.seq.gz files in {args.data_dir}", file=sys.stderr)
        return 1
    cfg = load_deepbind_config(args.config)
    cal, m = cfg.calibration, cfg.model
    print(
        f"biocnn: {args.config}: {m.num_motifs} motifs x {m.motif_len} bp, ensemble of {m.ensemble}, "
        f"{cfg.data.negatives_per_positive} shuffled negatives per positive; calibration {cal.trials} trials x "
        f"{cal.folds} folds x {cal.epochs} epochs on {cal.max_train} positives; at most {cfg.train.epochs} epochs; "
        f"budget {args.budget:.0f} CPU-s per experiment (torch threads: {torch.get_num_threads()})"
    )
    results = {}
    for ac in sets:
        tf = ac.name.split("_")[0]
        if args.only and tf not in args.only:
            continue
        b = ac.with_name(ac.name.replace("_AC.seq.gz", "_B.seq.gz"))
        if not b.is_file():
            print(f"{tf}: no test set {b.name}, skipped", file=sys.stderr)
            continue
        model, info = train_within_budget(ac, cfg, args.budget)
        test = labelled(read_set(b, cfg.model.motif_len), 1, cfg.train.seed)
        deepbind = evaluate_model(model, test)["roc_auc"]
        published, published_id = published_auc(Path(args.db), b.name, test)
        train_data = labelled(read_set(ac, cfg.model.motif_len), cfg.data.negatives_per_positive, cfg.train.seed)
        t0 = time.perf_counter()
        kmer = kmer_lr_auc(train_data.seqs, train_data.labels, test.seqs, test.labels)
        kmer_s = time.perf_counter() - t0
        pwm, pwm_id = pwm_auc(tf, test.seqs, test.labels)
        results[tf] = {
            "deepbind_auc": deepbind,
            "published_auc": published,
            "published_id": published_id,
            "kmer_lr_auc": kmer,
            "pwm_auc": pwm,
            "val_auc": info["val_auc"],
            "train_seconds": info["seconds"],
            "train_cpu_seconds": info["cpu_seconds"],
            "epochs": info["epochs"],
            "members": info["members"],
            "calibrated_params": info["calibration"]["params"],
            "kmer_lr_seconds": kmer_s,
            "pwm_motif": pwm_id,
            "n_train": info["n_train"],
        }
        print(
            f"{tf}: biocnn {deepbind:.4f}  published {published:.4f} ({published_id})  k-mer LR {kmer:.4f}  "
            f"PWM {pwm:.4f} ({pwm_id})  {info['seconds']:.0f} s wall / {info['cpu_seconds']:.0f} s CPU, "
            f"{info['members']} member(s), {info['epochs']} epochs, validation AUC {info['val_auc']:.4f}",
            flush=True,
        )

    header = (
        f"{'TF':<8} {'biocnn':>7} {'published':>10} {'k-mer LR':>9} {'PWM':>7} {'vs pub':>7} {'vs LR':>7} "
        f"{'vs PWM':>7} {'wall s':>7} {'CPU s':>7}"
    )
    print("\n" + header + "\n" + "-" * len(header))
    for tf, r in results.items():
        print(
            f"{tf:<8} {r['deepbind_auc']:>7.4f} {r['published_auc']:>10.4f} {r['kmer_lr_auc']:>9.4f} "
            f"{r['pwm_auc']:>7.4f} {r['deepbind_auc'] / r['published_auc']:>7.4f} "
            f"{r['deepbind_auc'] / r['kmer_lr_auc']:>7.4f} {r['deepbind_auc'] / r['pwm_auc']:>7.4f} "
            f"{r['train_seconds']:>7.0f} {r['train_cpu_seconds']:>7.0f}"
        )
    if results:
        keys = ("deepbind_auc", "published_auc", "kmer_lr_auc", "pwm_auc")
        mean = {k: float(np.mean([r[k] for r in results.values()])) for k in keys}
        print(
            f"{'mean':<8} {mean['deepbind_auc']:>7.4f} {mean['published_auc']:>10.4f} {mean['kmer_lr_auc']:>9.4f} "
            f"{mean['pwm_auc']:>7.4f} {mean['deepbind_auc'] / mean['published_auc']:>7.4f}"
        )
        wins = all(
            r["deepbind_auc"] > max(r["published_auc"], r["kmer_lr_auc"], r["pwm_auc"]) for r in results.values()
        )
        print(
            f"biocnn above the published model, k-mer LR and PWM on every set: {wins}; "
            f"mean AUC >= 0.95: {mean['deepbind_auc'] >= 0.95}"
        )
        results["mean"] = mean
    write_json(args.out, results)  # atomic, like every biocnn output
    return 0


if __name__ == "__main__":
    sys.exit(main())
