"""``biocnn deepbind <verb>``: calibrate, train, evaluate, motifs, mutation-map, variants, scan, synth, report,
import, predict."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from biocnn.cli_common import add_budget_options, add_group, add_verb, budget_overrides

log = logging.getLogger("biocnn.deepbind")


def _config(args: argparse.Namespace):
    from biocnn.deepbind.config import load_deepbind_config

    overrides = {
        "data.train": getattr(args, "train", None),
        "data.test": getattr(args, "test", None),
        **budget_overrides(args),
    }
    return load_deepbind_config(args.config, overrides)


def _training_data(cfg, seed: int, max_positives: int | None):
    from biocnn.deepbind.data import labelled, read_set
    from biocnn.errors import ConfigError

    if not cfg.data.train:
        raise ConfigError("data.train is not set (give it in the config or with --train FILE)")
    seqs = read_set(cfg.data.train, cfg.model.motif_len, cfg.data.labels, cfg.data.reference)
    return labelled(seqs, cfg.data.negatives_per_positive, seed, max_positives)


# ----------------------------------------------------------------------------- calibrate
def _calibrate(args: argparse.Namespace) -> int:
    from biocnn.deepbind import search as cal
    from biocnn.io.atomic import write_json

    cfg = _config(args)
    out = Path(args.out)
    if args.select:
        best = cal.select_best(cal.read_trials(out, cfg.calibration.trials))
        write_json(out / cal.BEST_FILE, best)
        print(f"best trial {best['trial']}: mean val AUC {best['mean_auc']:.4f}, {best['epochs']} epochs")
        return 0
    data = _training_data(cfg, cfg.calibration.seed, cfg.calibration.max_train or cfg.data.max_train)
    indices = [args.trial] if args.trial is not None else range(cfg.calibration.trials)
    results = []
    for i in indices:
        result = cal.run_trial(cfg, i, data)
        cal.write_trial(out, result)
        results.append(result)
        print(
            f"trial {i}: mean val AUC {result['mean_auc']:.4f} over {result['folds']} folds ({result['seconds']:.0f} s)"
        )
    if args.trial is None:
        best = cal.select_best(results)
        write_json(out / cal.BEST_FILE, best)
        print(f"best trial {best['trial']}: mean val AUC {best['mean_auc']:.4f}, {best['epochs']} epochs")
    return 0


# ----------------------------------------------------------------------------- train / evaluate
def _train(args: argparse.Namespace) -> int:
    import json

    from biocnn.checkpoint import provenance, update_metrics
    from biocnn.deepbind import search as cal
    from biocnn.deepbind.data import split
    from biocnn.deepbind.train import train_deepbind
    from biocnn.errors import InputError

    cfg = _config(args)
    best = None
    if args.calibration:
        path = Path(args.calibration)
        if not path.is_file():
            raise InputError(path, "calibration result not found")
        best = json.loads(path.read_text())
        cfg = cal.calibrated_config(cfg, best)
    data = _training_data(cfg, cfg.train.seed, cfg.data.max_train)
    train, val = split(data, cfg.data.val_fraction, cfg.train.seed) if cfg.data.val_fraction > 0 else (data, None)
    extra = {
        "data": cfg.data.model_dump(),
        "calibration": best,
        "input_length": max(len(s) for s in data.seqs),
        "provenance": provenance(cfg.train.seed, [cfg.data.train], args.config),
    }
    _, result = train_deepbind(
        train, val, cfg.model, cfg.train, out_dir=args.out, extra_config=extra, resume=args.resume
    )
    update_metrics(
        args.out, {"n_train": len(train), "n_val": len(val) if val else 0, "epochs_run": len(result.history)}
    )
    shown = {k: round(v, 4) for k, v in result.best_metrics.items() if isinstance(v, float)}
    print(f"trained {args.out}: best epoch {result.best_epoch} {shown}")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from biocnn.checkpoint import load_model
    from biocnn.deepbind.data import labelled, read_set
    from biocnn.deepbind.original import Scoring, evaluate_rule
    from biocnn.deepbind.train import evaluate_model
    from biocnn.io.atomic import write_json

    model, config = load_model(args.model)
    motif_len = config["model"]["motif_len"]
    data = config.get("data", {})
    seqs = read_set(args.test, motif_len, args.labels, args.reference)
    test = labelled(seqs, data.get("negatives_per_positive", 1), args.seed)
    scoring = Scoring.from_config(config)  # imported models: the original tool's windowed rule
    metrics = evaluate_model(model, test) if scoring.rule == "whole" else evaluate_rule(model, test, scoring)
    metrics["model"] = str(args.model)
    metrics["skipped"] = len(seqs.skipped)
    write_json(args.out, metrics)
    print(f"{args.test}: ROC AUC {metrics['roc_auc']:.4f}, PR AUC {metrics['pr_auc']:.4f} (n={metrics['n']})")
    return 0


# ----------------------------------------------------------------------------- interpretation
def _motifs(args: argparse.Namespace) -> int:
    from biocnn.deepbind.motifs import run_motifs

    summary = run_motifs(
        args.model,
        args.sequences,
        args.out,
        top_fraction=args.top_fraction,
        jaspar_collection=args.collection,
        tax_group=args.tax_group,
        reference=args.reference,
        max_sequences=args.max_sequences,
    )
    print(f"{summary['n_motifs']} motifs -> {args.out} ({summary['n_matched']} with a JASPAR match q<0.05)")
    return 0


def _mutation_map(args: argparse.Namespace) -> int:
    from biocnn.deepbind.mutation import run_mutation_maps

    written, failures = run_mutation_maps(args.model, args.fasta, args.out, limit=args.limit)
    print(f"{written} mutation maps -> {args.out}" + (f"; {len(failures)} failed" if failures else ""))
    for rid, why in failures:
        print(f"  {rid}: {why}")
    return 1 if failures and not written else 0


def _variants(args: argparse.Namespace) -> int:
    from biocnn.deepbind.variants import run_variants

    counts = run_variants(args.model, args.vcf, args.reference, args.out, flank=args.flank)
    what = "variants" if counts["models"] == 1 else f"(variant, model) rows of {counts['models']} models"
    print(
        f"{counts['scored']} {what} scored, {counts['ref_mismatch']} with a reference mismatch, "
        f"{counts['failed']} failed -> {args.out}"
    )
    return 0


def _scan(args: argparse.Namespace) -> int:
    from biocnn.deepbind.scan import run_scan

    stats = run_scan(
        args.model,
        args.fasta,
        args.out,
        window=args.window,
        stride=args.stride,
        threshold=args.threshold,
        chunk=args.chunk,
    )
    if "models" in stats:  # many models: a folder of outputs
        print(
            f"scanned {stats['bp']} bp with {len(stats['models'])} models in {stats['seconds']:.1f} s "
            f"({stats['model_mbp_per_s']:.2f} model x Mbp/s), {stats['windows']} windows, "
            f"{sum(stats['peaks'].values())} peaks -> {args.out}/<model>.bedgraph/.bed"
        )
        return 0
    print(
        f"scanned {stats['bp']} bp in {stats['seconds']:.1f} s ({stats['bp_per_s'] / 1e6:.2f} Mbp/s), "
        f"{stats['windows']} windows, {stats['peaks']} peaks -> {args.out}.bedgraph/.bed"
    )
    return 0


def _synth(args: argparse.Namespace) -> int:
    from biocnn.synthetic.sequences import write_demo_binding

    files = write_demo_binding(
        args.out, seed=args.seed, n_train=args.n_train, n_test=args.n_test, motif=args.motif, genome_bp=args.genome_bp
    )
    print("wrote " + ", ".join(str(p) for p in files.values()))
    return 0


def _report(args: argparse.Namespace) -> int:
    from biocnn.deepbind.report import build_report

    summary = build_report(args.experiments, args.results, args.out)
    print(f"report for {len(summary['experiments'])} experiments -> {args.out}")
    return 0


# ----------------------------------------------------------------------------- published models
def _import(args: argparse.Namespace) -> int:
    from biocnn.deepbind.zoo import import_models

    result = import_models(
        args.db,
        args.out,
        ids=args.ids,
        proteins=args.protein,
        experiments=args.experiment,
        progress=_progress("imported"),
    )
    print(f"{result.seen} models seen: {len(result.written)} written to {args.out}, {len(result.failures)} failed")
    for model_id, why in result.failures:
        print(f"  {model_id}: {why}")
    return 1 if result.failures else 0


def _progress(verb: str):
    import time

    start = time.perf_counter()

    def report(done: int, total: int) -> None:
        if done == total or done % 100 == 0:
            rate = done / max(time.perf_counter() - start, 1e-9)
            log.info("%s %d/%d models (%.0f models/s)", verb, done, total, rate)

    return report


def _predict(args: argparse.Namespace) -> int:
    from biocnn.deepbind.predict import run_predict

    stats = run_predict(
        args.model, args.sequences, args.out, rule=args.rule, window_size=args.window_size, average=args.average or None
    )
    print(
        f"scored {stats['sequences']} sequences with {stats['models']} models in {stats['seconds']:.1f} s -> {args.out}"
    )
    return 0


def register(subparsers) -> None:
    verbs = add_group(
        subparsers,
        "deepbind",
        "DeepBind-style binding models: calibrate, train, evaluate, motifs, "
        "mutation-map, variants, scan, import, predict",
    )

    p = add_verb(verbs, "calibrate", _calibrate, "random search + k-fold CV over hyper-parameters")
    p.add_argument("--config", required=True, help="DeepBind YAML config")
    p.add_argument("--out", required=True, help="directory for trial-NNN.json and best.json")
    p.add_argument("--train", help="training sequences (overrides data.train)")
    p.add_argument("--trial", type=int, help="run only this trial (one cluster job); default: all, then select")
    p.add_argument("--select", action="store_true", help="only pick the best of the trial files in --out")

    p = add_verb(verbs, "train", _train, "train a DeepBind model")
    p.add_argument("--config", required=True, help="DeepBind YAML config")
    p.add_argument("--out", required=True, help="model directory")
    p.add_argument("--train", help="training sequences (overrides data.train)")
    p.add_argument("--calibration", help="best.json from 'calibrate': retrain its configuration on all data")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")
    add_budget_options(p)

    p = add_verb(verbs, "evaluate", _evaluate, "ROC AUC and PR AUC on held-out sequences")
    p.add_argument("--model", required=True, help="model directory")
    p.add_argument("--test", required=True, help="test sequences (DeepBind table, FASTA or BED)")
    p.add_argument("--out", required=True, help="metrics.json to write")
    p.add_argument("--labels", help="TSV of id<TAB>label for a FASTA test set")
    p.add_argument("--reference", help="reference FASTA for a BED test set")
    p.add_argument("--seed", type=int, default=0, help="seed of shuffled negatives for a positives-only set")

    p = add_verb(verbs, "motifs", _motifs, "detector motifs: MEME file, logos, JASPAR matches (Tomtom)")
    p.add_argument("--model", required=True)
    p.add_argument("--sequences", required=True, help="sequences whose windows activate the detectors")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--reference", help="reference FASTA for BED sequences")
    p.add_argument(
        "--top-fraction",
        type=float,
        default=0.5,
        help="a window counts when its activation exceeds this fraction of the detector's maximum",
    )
    p.add_argument("--max-sequences", type=int, default=5000, help="use at most this many sequences")
    p.add_argument("--collection", default="CORE", help="JASPAR collection to match against")
    p.add_argument("--tax-group", default="vertebrates", help="JASPAR taxonomic group")

    p = add_verb(verbs, "mutation-map", _mutation_map, "in-silico mutagenesis maps (figure + matrix per sequence)")
    p.add_argument("--model", required=True)
    p.add_argument("--fasta", required=True)
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--limit", type=int, help="map at most this many sequences")

    p = add_verb(verbs, "variants", _variants, "score change of VCF variants (SNVs, short indels)")
    p.add_argument(
        "--model",
        required=True,
        action="append",
        help="model directory, or a folder of them (e.g. an import's --out); repeat for more (adds a model column)",
    )
    p.add_argument("--vcf", required=True)
    p.add_argument("--reference", required=True, help="reference FASTA (indexed on first use)")
    p.add_argument("--out", required=True, help="TSV to write")
    p.add_argument("--flank", type=int, help="bp of context on each side (default: half the training length)")

    p = add_verb(verbs, "scan", _scan, "scan a FASTA (any size) in windows: bedGraph + BED peaks")
    p.add_argument(
        "--model",
        required=True,
        action="append",
        help="model directory, or a folder of them (e.g. an import's --out); repeat for more (one pass)",
    )
    p.add_argument("--fasta", required=True)
    p.add_argument(
        "--out",
        required=True,
        help="output prefix: PREFIX.bedgraph, PREFIX.bed, PREFIX.json; with several models a folder: "
        "OUT/<model>.bedgraph, OUT/<model>.bed, OUT/scan.json",
    )
    p.add_argument("--window", type=int, default=101, help="window length in bp")
    p.add_argument("--stride", type=int, default=50, help="step between windows in bp")
    p.add_argument("--threshold", type=float, default=0.0, help="peak threshold on the score (logit)")
    p.add_argument("--chunk", type=int, default=1_000_000, help="bp scored per batch (memory is constant in it)")

    p = add_verb(verbs, "synth", _synth, "generate demo data: JASPAR motifs planted in random background")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--motif", default="MA0139", help="JASPAR matrix ID (base) or TF name to plant")
    p.add_argument("--n-train", type=int, default=2000)
    p.add_argument("--n-test", type=int, default=500)
    p.add_argument("--genome-bp", type=int, default=200_000, help="length of the demo genome to scan")

    p = add_verb(verbs, "report", _report, "collect every experiment's results into summary.json + figures")
    p.add_argument("--results", required=True, help="the workflow's deepbind results directory")
    p.add_argument("--experiments", nargs="+", required=True, help="experiment names (subdirectories)")
    p.add_argument("--out", required=True, help="report directory")

    p = add_verb(verbs, "import", _import, "convert published DeepBind models (db.tsv + params/) to model directories")
    p.add_argument("--db", required=True, help="the release's db folder: db.tsv and params/")
    p.add_argument("--out", required=True, help="folder for one model directory per DeepBind ID")
    p.add_argument("--ids", nargs="+", help="DeepBind IDs to import (default: every model with parameters)")
    p.add_argument("--protein", nargs="+", help="only these proteins (case-insensitive)")
    p.add_argument("--experiment", nargs="+", help="only these experiments: SELEX, ChIP-seq, PBM, RNAcompete")

    p = add_verb(verbs, "predict", _predict, "score sequences with one or many models (the original tool's table)")
    p.add_argument(
        "--model",
        required=True,
        action="append",
        help="model directory, or a folder of them (e.g. an import's --out); repeat for more",
    )
    p.add_argument("--sequences", required=True, help="one sequence per line, FASTA, or a DeepBind table")
    p.add_argument("--out", required=True, help="TSV to write: a header of model names, one row per sequence")
    p.add_argument(
        "--rule",
        choices=("original", "whole"),
        help="scoring rule for every model (default: each model's own; imported models: original)",
    )
    p.add_argument("--window-size", type=int, help="window length of the original rule (default: int(1.5 m))")
    p.add_argument(
        "--average",
        action="store_true",
        help="original rule: sum of the window scores / sequence length instead of the maximum",
    )
