"""``biocnn mammo <verb>``: synth, train, evaluate, score, report."""

from __future__ import annotations

import argparse
import json

from biocnn.cli_common import (
    add_budget_options,
    add_group,
    add_verb,
    budget_overrides,
    existing_file,
    existing_path,
    non_negative_int,
    positive_int,
)


def _synth(args: argparse.Namespace) -> int:
    from biocnn.synthetic.mammo import synthesize

    summary = synthesize(
        args.out,
        args.exams,
        args.seed,
        rows=args.rows,
        cols=args.cols,
        tomo=args.tomo,
        tomo_frames=args.tomo_frames,
        syntax=args.syntax,
        bits=args.bits,
    )
    print(json.dumps(summary, indent=2))
    return 0


def _train(args: argparse.Namespace) -> int:
    from biocnn.mammo.train import train

    metrics = train(
        args.config,
        args.out,
        resume=args.resume,
        overrides={
            "data.manifest": args.manifest,
            "data.label_column": args.label_column,
            "train.device": args.device,
            **budget_overrides(args),
        },
    )
    print(json.dumps(metrics, indent=2, default=str))
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from biocnn.mammo.evaluate import evaluate

    result = evaluate(
        args.model,
        args.manifest,
        args.out,
        device=args.device,
        heatmaps=args.heatmaps,
        workers=args.workers,
        label_column=args.label_column,
    )
    keys = ("auc", "auc_ci_low", "auc_ci_high", "sens_at_spec90", "spec_at_sens90", "ece", "pointing_game")
    print(json.dumps({k: result[k] for k in keys}, indent=2))
    return 0


def _score(args: argparse.Namespace) -> int:
    from biocnn.mammo.score import score

    summary = score(
        args.model,
        args.input,
        args.out,
        heatmaps=args.heatmaps,
        keep_ids=args.keep_ids,
        force=args.force,
        workers=args.workers,
        batch_size=args.batch_size,
        device=args.device,
        key_file=args.key_file,
    )
    print(json.dumps(summary, indent=2))
    return 0


def _report(args: argparse.Namespace) -> int:
    from biocnn.mammo.report import build_report

    print(json.dumps(build_report(args.evaluation, args.scores, args.out), indent=2))
    return 0


def register(subparsers) -> None:
    verbs = add_group(subparsers, "mammo", "mammogram classification: synth, train, evaluate, score, report")

    p = add_verb(verbs, "synth", _synth, "write generated MG DICOM exams (four views each) with lesion masks")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--exams", type=int, required=True, help="number of exams (one patient each)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--rows", type=int, default=640, help="image rows (full-field: 3328)")
    p.add_argument("--cols", type=int, default=512, help="image columns (full-field: 2560)")
    p.add_argument("--tomo", type=int, default=2, help="exams that also get tomosynthesis volumes")
    p.add_argument("--tomo-frames", type=int, default=8)
    p.add_argument("--syntax", choices=["native", "rle", "j2k"], help="one transfer syntax for all files")
    p.add_argument("--bits", type=int, choices=range(10, 17), metavar="10..16", help="one BitsStored for all files")

    p = add_verb(verbs, "train", _train, "train the view classifier from a manifest (patient-level split)")
    p.add_argument("--config", required=True, type=existing_file, help="YAML config (configs/mammo_demo.yaml)")
    p.add_argument("--out", required=True, help="model directory")
    p.add_argument("--manifest", help="manifest CSV (overrides data.manifest)")
    p.add_argument("--label-column", help="manifest column with the 0/1 target (overrides data.label_column)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], help="overrides train.device")
    add_budget_options(p)

    p = add_verb(verbs, "evaluate", _evaluate, "AUC (95%% CI), sens/spec at 90%%, calibration, ROC on a manifest")
    p.add_argument("--model", required=True, type=existing_path, help="model directory")
    p.add_argument("--manifest", required=True, type=existing_file, help="labelled manifest CSV")
    p.add_argument(
        "--label-column", help="manifest column with the 0/1 target (default: the model's data.label_column)"
    )
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--heatmaps", type=non_negative_int, default=8, help="Grad-CAM overlays to write (malignant images)")
    p.add_argument("--workers", type=non_negative_int, default=0, help="decoding worker processes")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])

    p = add_verb(verbs, "score", _score, "score a folder of studies (or a manifest) for clinicians")
    p.add_argument("--model", required=True, type=existing_path, help="model directory")
    p.add_argument("--input", required=True, type=existing_path, help="folder (walked recursively) or manifest CSV")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--heatmaps", action="store_true", help="write Grad-CAM overlay PNGs")
    p.add_argument("--keep-ids", action="store_true", help="keep patient and study IDs (default: keyed hash)")
    p.add_argument("--force", action="store_true", help="re-score files already in the outputs")
    p.add_argument("--key-file", help="pseudonymisation key (default: $BIOCNN_PSEUDONYM_KEY or OUT/.pseudonym.key)")
    p.add_argument(
        "--workers", type=non_negative_int, default=None, help="decoding worker processes (default: cores - 1)"
    )
    p.add_argument("--batch-size", type=positive_int, default=8, help="images per model call")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])

    p = add_verb(verbs, "report", _report, "figures and summary.json for the HTML report")
    p.add_argument("--evaluation", required=True, type=existing_path, help="output folder of 'evaluate'")
    p.add_argument("--scores", required=True, type=existing_path, help="output folder of 'score'")
    p.add_argument("--out", required=True, help="report folder")
