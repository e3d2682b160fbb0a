"""Segmentation on real images: biocnn beside nnU-Net v2, MONAI's BasicUNet and an Otsu threshold.

Every method trains on the same ``--train`` images for the same wall-clock budget on this
machine (biocnn: ``segment train --max-seconds BUDGET``, which bounds its training loop; its
setup and post-training statistics are timed apart), and predicts the same ``--test`` images;
one evaluation (:mod:`peers.cases`) scores all label maps: foreground Dice averaged over test
images (nuclei), whole tumour / tumour core / enhancing tumour Dice averaged over test cases
(BRATS). biocnn also reports its uncertainty: ``error_auroc`` (voxel entropy vs wrong voxels,
from ``segment evaluate``), ``spearman`` (image review score vs 1 - Dice), ``id_flagged`` (share
of ``--test`` flagged for review) and, with ``--shifted``, ``ood_auroc`` (review score
separating ``--shifted`` from ``--test`` images).

    python benchmarks/segment_real.py --dataset nuclei --train data/real/nuclei.json \\
        --test data/real/nuclei.json [--shifted DIR] --out segment_real_nuclei.json
    python benchmarks/segment_real.py --dataset brats --train data/real/brats.json \\
        --test data/real/brats.json --out segment_real_brats.json

``--train``/``--test`` take a folder in biocnn's layout or a datalist JSON (its ``training``
and ``test`` lists). nnU-Net runs in ``--peers-python`` (a Python with the ``peers`` extra; see
docs/benchmarks.md); a method that cannot run says why in the table and the JSON.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np
import torch
from peers import biocnn_cli, monai_unet, nnunet, otsu
from peers.cases import DATASETS, Dataset, evaluate, load_cases

from biocnn.io.atomic import write_json
from biocnn.segment.evaluate import finite_or_none

REPO = Path(__file__).resolve().parents[1]
METHODS = ("biocnn", "nnunet", "monai_basicunet", "otsu")
# Per method; the whole nuclei run stays within 60 minutes, BRATS within 90 (2 cores).
DEFAULT_BUDGET = {"nuclei": 600, "brats": 1200}


def _config(path: Path):
    from biocnn.config import load_config
    from biocnn.segment.config import SegmentConfig

    if not path.is_file():
        raise FileNotFoundError(f"{path.relative_to(REPO) if path.is_relative_to(REPO) else path} not found")
    return load_config(path, SegmentConfig)


def run_biocnn(args, dataset: Dataset, work: Path, test_cases) -> dict:
    config = args.config or REPO / "configs" / f"segment_{dataset.name}.yaml"
    _config(config)  # a missing or invalid config is this method's error
    label = "label.png" if dataset.spatial_dims == 2 else "label.nii.gz"
    predictions, info, model = biocnn_cli.run(
        config, args.train, args.test, work, args.budget_seconds, label, args.biocnn_epochs
    )
    result = evaluate(predictions, test_cases, dataset)
    # The review score is set against 1 - Dice, the Dice of the regions averaged for BRATS.
    dice = {c: float(np.mean(list(d.values()))) for c, d in result["per_case"].items()}
    review = biocnn_cli.review_metrics(info, dice, model, args.shifted, work)
    return {**result, **info, **review}


def run_nnunet(args, dataset: Dataset, work: Path, train_cases, test_cases) -> dict:
    why = nnunet.available(args.peers_python)
    if why:
        raise RuntimeError(why)
    predictions, info = nnunet.run(
        train_cases,
        test_cases,
        dataset,
        work,
        args.budget_seconds,
        args.peers_python,
        args.nnunet_iterations,
        args.nnunet_mirroring,
    )
    return {**evaluate(predictions, test_cases, dataset), **info}


def run_monai(args, dataset: Dataset, work: Path, train_cases, test_cases) -> dict:
    cfg = _config(args.config or REPO / "configs" / f"segment_{dataset.name}.yaml")
    predictions, info = monai_unet.run(train_cases, test_cases, dataset, cfg, work, args.budget_seconds)
    return {**evaluate(predictions, test_cases, dataset), **info}


def run_otsu(args, dataset: Dataset, work: Path, test_cases) -> dict:
    if dataset.name != "nuclei":
        return {"error": "not run: the classical baseline is for nuclei only (no grey threshold finds tumour regions)"}
    predictions, info = otsu.run(test_cases, dataset, work)
    return {**evaluate(predictions, test_cases, dataset), **info}


def run_method(name: str, args, dataset: Dataset, work: Path, train_cases, test_cases) -> dict:
    """One method's result, or ``{"error": why}`` when it cannot run (never dropped)."""
    if args.only and name not in args.only:
        return {"error": "not run (--only)"}
    work = work / name
    work.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    print(f"[{time.strftime('%H:%M:%S')}] {name}: start (budget {args.budget_seconds:.0f} s)", flush=True)
    try:
        if name == "biocnn":
            result = run_biocnn(args, dataset, work, test_cases)
        elif name == "nnunet":
            result = run_nnunet(args, dataset, work, train_cases, test_cases)
        elif name == "monai_basicunet":
            result = run_monai(args, dataset, work, train_cases, test_cases)
        else:
            result = run_otsu(args, dataset, work, test_cases)
    except Exception as exc:  # a method that fails is reported, the others still run
        traceback.print_exc()
        result = {"error": f"{type(exc).__name__}: {exc}"}
    result["wall_seconds"] = time.perf_counter() - start
    result["load_average_1min"] = os.getloadavg()[0]
    print(f"[{time.strftime('%H:%M:%S')}] {name}: done in {result['wall_seconds']:.0f} s", flush=True)
    return result


def subset_datalist(cases, key: str, path: Path) -> Path:
    """A datalist JSON listing ``cases`` (absolute paths) under ``key``."""
    entries = []
    for c in cases:
        images = [str(Path(p).resolve()) for p in c.images]
        entries.append({"image": images if len(images) > 1 else images[0], "label": str(Path(c.label).resolve())})
    write_json(path, {key: entries})
    return path


def _fmt(value) -> str:
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return "n/a"
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def _note(name: str, r: dict) -> str:
    if name != "biocnn":
        return f"{r['epochs']} epochs" if "epochs" in r else ""
    return (
        f"{r['epochs']} epochs ({r['steps']} steps, stopped: {r['stopped']}); "
        f"setup {r['setup_seconds']:.0f} s, post-training {r['post_train_seconds']:.0f} s"
    )


def table(result: dict, dataset: Dataset) -> str:
    """The side-by-side table; ``train_seconds`` is each method's training (biocnn: its loop,
    bounded by the budget), ``post_train_seconds`` biocnn's calibration and review statistics."""
    dice_keys = list(dataset.regions)
    review = ["error_auroc", "spearman", "id_flagged", "ood_auroc"]
    head = ["method", *dice_keys, "train_seconds", "post_train_seconds", *review, "note"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name in METHODS:
        r = result[name]
        if "error" in r:
            cells = [name, *["n/a"] * (len(head) - 2), r["error"]]
        else:
            post = f"{r['post_train_seconds']:.0f}" if "post_train_seconds" in r else ""
            cells = [name, *[_fmt(r.get(k)) for k in dice_keys], f"{r['train_seconds']:.0f}", post]
            cells += [_fmt(r.get(k)) if name == "biocnn" else "" for k in review] + [_note(name, r)]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append(
        "\ntrain_seconds: the training (biocnn: its training loop, stopped by --max-seconds = the budget; "
        "MONAI: reading, caching and the loop); post_train_seconds: biocnn's calibration and review "
        "statistics after the loop, outside the budget"
    )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", choices=sorted(DATASETS), required=True)
    parser.add_argument("--train", required=True, help="folder in biocnn's layout or datalist JSON ('training')")
    parser.add_argument("--test", required=True, help="folder in biocnn's layout or datalist JSON ('test')")
    parser.add_argument("--shifted", help="images unlike the training data (folder), for biocnn's ood_auroc")
    parser.add_argument("--out", required=True, help="result JSON")
    parser.add_argument("--budget-seconds", type=float, help="training budget per method (nuclei 600, brats 1200)")
    parser.add_argument("--only", nargs="+", choices=METHODS, help="run only these methods (development)")
    parser.add_argument("--limit", type=int, help="first N training and N test cases only (development)")
    parser.add_argument("--work", type=Path, help="keep data, models and predictions here (default: a temp dir)")
    parser.add_argument("--config", type=Path, help="biocnn config (default configs/segment_<dataset>.yaml)")
    parser.add_argument(
        "--biocnn-epochs", type=int, help="biocnn epochs at most (default: the config's; the budget stops it earlier)"
    )
    parser.add_argument(
        "--peers-python",
        default=os.environ.get("PEERS_PYTHON", "python"),
        help="Python with nnunetv2 installed (default $PEERS_PYTHON or python)",
    )
    parser.add_argument("--nnunet-iterations", type=int, default=10, help="nnU-Net iterations per epoch")
    parser.add_argument("--nnunet-mirroring", action="store_true", help="nnU-Net's test-time mirroring")
    parser.add_argument("--threads", type=int, default=2, help="torch threads for the in-process peers")
    args = parser.parse_args()
    args.budget_seconds = args.budget_seconds or DEFAULT_BUDGET[args.dataset]
    torch.set_num_threads(args.threads)
    dataset = DATASETS[args.dataset]
    train_cases = load_cases(args.train, dataset, "training", args.limit)
    test_cases = load_cases(args.test, dataset, "test", args.limit)
    print(
        f"{dataset.name}: {len(train_cases)} training, {len(test_cases)} test cases; "
        f"budget {args.budget_seconds:.0f} s per method; load {os.getloadavg()[0]:.2f}",
        flush=True,
    )
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        if args.limit:  # biocnn's command line gets the same subset, as a datalist
            args.train = str(subset_datalist(train_cases, "training", work / "train.json"))
            args.test = str(subset_datalist(test_cases, "test", work / "test.json"))
        result = {name: run_method(name, args, dataset, work, train_cases, test_cases) for name in METHODS}
    result["budget_seconds"] = args.budget_seconds
    write_json(args.out, finite_or_none(result))
    print(
        f"\n{dataset.name}: {len(train_cases)} training / {len(test_cases)} test cases, "
        f"budget {args.budget_seconds:.0f} s per method\n"
    )
    print(table(result, dataset))


if __name__ == "__main__":
    main()
