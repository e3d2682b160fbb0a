"""DeepBind vs k-mer logistic regression vs JASPAR PWM on ENCODE ChIP-seq sets.

For every ``*_AC.seq.gz`` in ``--data-dir`` (positives only; negatives are dinucleotide
shuffles, as in DeepBind) a DeepBind model is calibrated (random search + k-fold CV on a
subsample) and trained within a per-experiment time budget, then tested on the matching
``*_B.seq.gz``. In the same run, on the same training data:

* k-mer (k = 4..6) counts + logistic regression;
* the best JASPAR PWM (max log-odds over positions and both strands) for the TF named by
  the file's first token (pyjaspar's database; no training).

    python benchmarks/deepbind_encode.py --data-dir ../shared/data/encode --out encode.json

JSON: ``{TF: {"deepbind_auc", "kmer_lr_auc", "pwm_auc", "train_seconds", ...}}``.
"""

from __future__ import annotations

import argparse
import json
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

from biocnn.checkpoint import load_weights
from biocnn.config import EarlyStopping, TrainConfig
from biocnn.deepbind.config import CalibrationSection, DataSection, DeepBindConfig, ModelSection, SearchSpace
from biocnn.deepbind.data import labelled, read_set, split
from biocnn.deepbind.model import DeepBind
from biocnn.deepbind.search import apply_params, run_trial, select_best
from biocnn.deepbind.train import CpuBudgetReached, auc_metrics, cpu_budget_callback, evaluate_model, train_deepbind
from biocnn.io.atomic import write_json
from biocnn.io.sequences import one_hot_batch


def deepbind_config(args) -> DeepBindConfig:
    """The settings every experiment starts from; calibration varies lr, decay, dropout, etc."""
    return DeepBindConfig(
        data=DataSection(negatives_per_positive=args.negatives, val_fraction=0.1),
        model=ModelSection(num_motifs=16, motif_len=24, pool="max", hidden=32, dropout=0.25),
        train=TrainConfig(
            epochs=args.max_epochs,
            batch_size=args.batch_size,
            lr=3e-3,
            progress=False,
            seed=args.seed,
            device="cpu",
            early_stopping=EarlyStopping(monitor="val_auc", mode="max", patience=4),
        ),
        calibration=CalibrationSection(
            trials=args.trials,
            folds=args.folds,
            epochs=args.calibration_epochs,
            max_train=args.calibration_positives,
            seed=args.seed,
            space=SearchSpace(
                lr=(1e-3, 5e-3),
                weight_decay=(1e-8, 1e-5),
                dropout=[0.1, 0.25, 0.5],
                init_scale=(0.02, 0.2),
                hidden=[0, 32],
                num_motifs=[16, 32],
                pool=["max"],
            ),
        ),
    )


def train_within_budget(ac: Path, cfg: DeepBindConfig, budget_cpu_s: float, seed: int):
    """Calibrate on a subsample, then train the best configuration on all the data until early
    stopping, ``train.epochs`` or the CPU budget: training stops before an epoch that would
    take the experiment past ``budget_cpu_s`` CPU seconds (process time over all threads), and
    the best epoch so far is kept. CPU time, not wall time, because other jobs on a shared
    machine stretch the wall clock."""
    start, cpu0 = time.perf_counter(), time.process_time()
    seqs = read_set(ac, cfg.model.motif_len)
    cal_data = labelled(seqs, cfg.data.negatives_per_positive, seed, cfg.calibration.max_train)
    results = [run_trial(cfg, i, cal_data) for i in range(cfg.calibration.trials)]
    best = select_best(results)
    tuned = apply_params(cfg, best["params"])
    data = labelled(seqs, cfg.data.negatives_per_positive, seed)
    train, val = split(data, cfg.data.val_fraction, seed)
    with tempfile.TemporaryDirectory() as tmp:
        budget = cpu_budget_callback(budget_cpu_s, cpu0)
        try:
            model, result = train_deepbind(
                train, val, tuned.model, tuned.train, out_dir=tmp, extra_config={}, callbacks=[budget]
            )
            epochs = len(result.history)
        except CpuBudgetReached:
            # The training loop keeps the best epoch so far in state/; take it from there.
            state = json.loads((Path(tmp) / "state" / "latest.json").read_text())
            model = DeepBind(**tuned.model.model_dump())
            model.load_state_dict(load_weights(Path(tmp) / "state" / state["best_weights"]))
            epochs = len(state["history"])
    return model, {
        "seconds": time.perf_counter() - start,
        "cpu_seconds": time.process_time() - cpu0,
        "epochs": epochs,
        "calibration": best,
        "n_train": len(train),
    }


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
    parser.add_argument(
        "--budget",
        type=float,
        default=280.0,
        help="CPU seconds per experiment (calibration + training), all threads counted",
    )
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--folds", type=int, default=2)
    parser.add_argument("--calibration-epochs", type=int, default=3)
    parser.add_argument("--calibration-positives", type=int, default=2000)
    parser.add_argument("--max-epochs", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--negatives", type=int, default=1, help="shuffled negatives per positive")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", nargs="*", help="TF names to run (default: all)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(2)

    sets = sorted(Path(args.data_dir).glob("*_AC.seq.gz"))
    if not sets:
        print(f"no *_AC.seq.gz files in {args.data_dir}", file=sys.stderr)
        return 1
    cfg = deepbind_config(args)
    print(
        f"DeepBind: {cfg.model.num_motifs} motifs x {cfg.model.motif_len} bp, {args.negatives} shuffled "
        f"negatives per positive; calibration {args.trials} trials x {args.folds} folds x "
        f"{args.calibration_epochs} epochs on {args.calibration_positives} positives; "
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
        model, info = train_within_budget(ac, cfg, args.budget, args.seed)
        test = labelled(read_set(b, cfg.model.motif_len), 1, args.seed)
        deepbind = evaluate_model(model, test)["roc_auc"]
        train_data = labelled(read_set(ac, cfg.model.motif_len), args.negatives, args.seed)
        t0 = time.perf_counter()
        kmer = kmer_lr_auc(train_data.seqs, train_data.labels, test.seqs, test.labels)
        kmer_s = time.perf_counter() - t0
        pwm, pwm_id = pwm_auc(tf, test.seqs, test.labels)
        results[tf] = {
            "deepbind_auc": deepbind,
            "kmer_lr_auc": kmer,
            "pwm_auc": pwm,
            "train_seconds": info["seconds"],
            "train_cpu_seconds": info["cpu_seconds"],
            "epochs": info["epochs"],
            "calibrated_params": info["calibration"]["params"],
            "kmer_lr_seconds": kmer_s,
            "pwm_motif": pwm_id,
            "n_train": info["n_train"],
        }
        print(
            f"{tf}: DeepBind {deepbind:.3f}  k-mer LR {kmer:.3f}  PWM {pwm:.3f} ({pwm_id})  "
            f"{info['seconds']:.0f} s wall / {info['cpu_seconds']:.0f} s CPU, {info['epochs']} epochs",
            flush=True,
        )

    header = (
        f"{'TF':<8} {'DeepBind':>9} {'k-mer LR':>9} {'PWM':>7} {'vs LR':>7} {'vs PWM':>7} {'wall s':>7} {'CPU s':>7}"
    )
    print("\n" + header + "\n" + "-" * len(header))
    for tf, r in results.items():
        print(
            f"{tf:<8} {r['deepbind_auc']:>9.3f} {r['kmer_lr_auc']:>9.3f} {r['pwm_auc']:>7.3f} "
            f"{r['deepbind_auc'] / r['kmer_lr_auc']:>7.3f} {r['deepbind_auc'] / r['pwm_auc']:>7.3f} "
            f"{r['train_seconds']:>7.0f} {r['train_cpu_seconds']:>7.0f}"
        )
    if results:
        mean = {k: float(np.mean([r[k] for r in results.values()])) for k in ("deepbind_auc", "kmer_lr_auc", "pwm_auc")}
        print(f"{'mean':<8} {mean['deepbind_auc']:>9.3f} {mean['kmer_lr_auc']:>9.3f} {mean['pwm_auc']:>7.3f}")
        wins = all(r["deepbind_auc"] > max(r["kmer_lr_auc"], r["pwm_auc"]) for r in results.values())
        print(f"DeepBind above both baselines on every set: {wins}; mean AUC >= 0.95: {mean['deepbind_auc'] >= 0.95}")
    write_json(args.out, results)  # atomic, like every biocnn output
    return 0


if __name__ == "__main__":
    sys.exit(main())
