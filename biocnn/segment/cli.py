"""``biocnn segment <verb>``: synth, train, predict, evaluate, report."""

from __future__ import annotations

import json

from biocnn.cli_common import add_budget_options, add_group, add_verb, budget_overrides, existing_file, existing_path

DATALIST_KEY_HELP = "the list of a datalist JSON to read (default: test)"


def _synth(args) -> int:
    if args.kind == "malaria":
        from biocnn.synthetic.malaria import write_malaria

        size = args.size or 128
        names = write_malaria(args.out, args.n, args.seed, size, args.shift, args.severity, args.format)
    else:
        from biocnn.synthetic.tumor import write_tumor

        size = args.size or 48
        names = write_tumor(args.out, args.n, args.seed, (size,) * 3, args.shift, args.severity)
    from pathlib import Path

    from biocnn.io.atomic import write_text

    # The case list doubles as the "done" marker a workflow waits for (written last).
    write_text(Path(args.out) / "cases.txt", "".join(f"{n}\n" for n in names))
    print(f"wrote {len(names)} {args.kind} cases to {args.out}")
    return 0


def _train(args) -> int:
    from biocnn.segment.train import train

    overrides = {
        "data.train": args.train,
        "data.val": args.val,
        "train.epochs": args.epochs,
        "train.seed": args.seed,
        "train.device": args.device,
        **budget_overrides(args),
    }
    print(json.dumps(train(args.config, args.out, resume=args.resume, overrides=overrides), indent=2))
    return 0


def _predict(args) -> int:
    from biocnn.segment.predict import predict

    summary = predict(
        args.model,
        args.input,
        args.out,
        args.mc_samples,
        args.tta,
        args.device,
        sw_batch_size=args.sw_batch_size,
        reference=args.reference,
        datalist_key=args.datalist_key,
    )
    print(f"{summary['outputs_written']} of {summary['inputs_seen']} inputs predicted -> {args.out}")
    for f in summary["failures"]:
        print(f"failed: {f['error']}")
    return 1 if summary["failures"] else 0


def _evaluate(args) -> int:
    from biocnn.segment.evaluate import evaluate, metrics_table

    print(metrics_table(evaluate(args.pred, args.labels, args.out, datalist_key=args.datalist_key)))
    return 0


def _report(args) -> int:
    from biocnn.segment.report import report

    if not (len(args.name) == len(args.metrics) == len(args.pred)):
        from biocnn.errors import BiocnnError

        raise BiocnnError("give one --name, --metrics and --pred per run")
    print(json.dumps(report(list(zip(args.name, args.metrics, args.pred)), args.out), indent=2))
    return 0


def register(subparsers) -> None:
    verbs = add_group(subparsers, "segment", "segmentation with uncertainty: synth, train, predict, evaluate")

    p = add_verb(verbs, "synth", _synth, "write generated demo data (malaria PNG fields or tumor NIfTI cases)")
    p.add_argument("--kind", choices=("malaria", "tumor"), required=True)
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--n", type=int, default=16, help="number of images / cases")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", type=int, help="field width (malaria, default 128) or volume edge (tumor, default 48)")
    p.add_argument(
        "--shift", choices=("none", "noise", "blur", "intensity"), default="none", help="out-of-distribution variant"
    )
    p.add_argument("--severity", type=float, default=1.0, help="strength of --shift")
    p.add_argument("--format", choices=("png", "tif"), default="png", help="malaria image format (tif: 16 bit)")

    p = add_verb(verbs, "train", _train, "train a U-Net from a YAML config")
    p.add_argument("--config", type=existing_file, required=True)
    p.add_argument("--out", required=True, help="model directory")
    p.add_argument("--train", help="override data.train (a folder, or a datalist JSON: its 'training' list)")
    p.add_argument("--val", help="override data.val (a folder, or a datalist JSON: its 'validation' list)")
    p.add_argument("--epochs", type=int, help="override train.epochs")
    p.add_argument("--seed", type=int, help="override train.seed")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), help="override train.device")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")
    add_budget_options(p)

    p = add_verb(verbs, "predict", _predict, "label maps, probabilities, entropy and mutual information")
    p.add_argument("--model", action="append", required=True, help="model directory (repeat for an ensemble)")
    p.add_argument(
        "--input",
        type=existing_path,
        required=True,
        help="image file, 4D NIfTI, case dir, dir of cases, or a datalist JSON (its --datalist-key list)",
    )
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument(
        "--mc-samples", dest="mc_samples", type=int, help="Monte Carlo dropout samples (default: model config, 20)"
    )
    p.add_argument("--tta", action="store_true", help="also average over flipped views")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument(
        "--sw-batch-size",
        dest="sw_batch_size",
        type=int,
        help="sliding windows per forward pass (default: model config; raise it on a GPU)",
    )
    p.add_argument(
        "--reference",
        type=existing_path,
        help="the models' training images (labels not needed): measure the review threshold with this "
        "sampling; needed for an ensemble or a --mc-samples other than the model config's "
        "(a datalist JSON: its 'training' list)",
    )
    p.add_argument("--datalist-key", dest="datalist_key", default="test", help=DATALIST_KEY_HELP)

    p = add_verb(verbs, "evaluate", _evaluate, "Dice, HD95, error-detection AUROC, Spearman, ECE")
    p.add_argument("--pred", type=existing_path, required=True, help="directory written by predict")
    p.add_argument(
        "--labels", type=existing_path, required=True, help="directory with the true labels, or a datalist JSON"
    )
    p.add_argument("--datalist-key", dest="datalist_key", default="test", help=DATALIST_KEY_HELP)
    p.add_argument("--out", required=True, help="metrics JSON")

    p = add_verb(verbs, "report", _report, "figures and summary.json for the report")
    p.add_argument("--name", action="append", required=True)
    p.add_argument("--metrics", action="append", required=True)
    p.add_argument("--pred", action="append", required=True)
    p.add_argument("--out", required=True, help="report directory")
