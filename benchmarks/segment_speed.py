"""Cost of T Monte Carlo dropout samples against one deterministic pass (same run).

For a 2D 1024 x 1024 malaria field and a 3D 128^3 tumor volume, with sliding windows:

* ``deterministic``: one pass, dropout off (the unit of the ratios);
* ``naive``: T full forward passes per window;
* ``ours``: the deterministic prefix once per window, the T samples batched through the
  stochastic tail only (:func:`biocnn.segment.sampling.unet_samples`).

Both sampling schemes draw from the same distribution, so their error-detection AUROC
(predictive entropy vs wrong pixels) must agree; the models are trained here on generated
data (or given with --model-2d/--model-3d). With ``--placements`` a second table times ``ours``
for other dropout placements (untrained weights: the cost does not depend on them). Last, the peak resident
memory of ``biocnn segment predict`` on a 4 x 240 x 240 x 155 BraTS-sized case (subprocess).

    python benchmarks/segment_speed.py --out segment_speed.json [--threads 1] [--quick]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from child_memory import peak_rss_gb

from biocnn.checkpoint import load_model
from biocnn.device import select_device
from biocnn.io.atomic import write_json
from biocnn.metrics import roc_auc
from biocnn.models import UNet
from biocnn.segment.config import DataConfig, InferenceConfig
from biocnn.segment.data import label_to_index
from biocnn.segment.inference import UncertaintyPredictor, sliding_stats
from biocnn.segment.uncertainty import maps_from_stats

REPO = Path(__file__).resolve().parents[1]


def _train(kind: str, work: Path, epochs: int) -> Path:
    from biocnn.segment.train import train
    from biocnn.synthetic.malaria import write_malaria
    from biocnn.synthetic.tumor import write_tumor

    data = work / f"{kind}_train"
    if kind == "malaria":
        write_malaria(data, 24, seed=101, size=128)
    else:
        write_tumor(data, 12, seed=101, shape=(48, 48, 48))
    out = work / f"{kind}_model"
    train(REPO / "configs" / f"segment_{kind}.yaml", out, overrides={"data.train": str(data), "train.epochs": epochs})
    return out


def _test_input(kind: str, quick: bool):
    """``(normalised image tensor (C, *spatial), class-index truth)`` in the model's space."""
    from monai.transforms import NormalizeIntensity

    rng = np.random.default_rng(7)
    if kind == "malaria":
        from biocnn.synthetic.malaria import malaria_field

        size = 512 if quick else 1024
        img, lab = malaria_field(rng, size, cell_scale=1.0)
        return torch.from_numpy(img.transpose(2, 0, 1).astype(np.float32) / 255.0), lab.astype(np.int64)
    from biocnn.synthetic.tumor import LABEL_VALUES, tumor_volume

    size = 96 if quick else 128
    img, lab = tumor_volume(rng, (size,) * 3)
    # The synthetic affine is diag(-1, -1, 1): flip the first two axes as Orientation(RAS) would.
    img, lab = img[:, ::-1, ::-1].copy(), lab[::-1, ::-1].copy()
    image = NormalizeIntensity(nonzero=True, channel_wise=True)(torch.from_numpy(img))
    return torch.as_tensor(image), label_to_index(lab, LABEL_VALUES, "bench", Path("bench"))


def _time(fn, repeats: int) -> tuple[float, torch.Tensor]:
    best, out = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()  # CUDA kernels run asynchronously: time them to completion
        best = min(best, time.perf_counter() - start)
    return best, out


def _error_auroc(stats: torch.Tensor, truth: np.ndarray) -> float:
    maps = maps_from_stats(stats[None])
    wrong = maps["label"][0].numpy() != truth
    return roc_auc(wrong.ravel(), maps["entropy"][0].numpy().ravel())


def bench_kind(
    kind: str,
    model_dir: Path,
    samples: int,
    repeats: int,
    quick: bool,
    device: torch.device | None = None,
    sw_batch_size: int | None = None,
    auroc_seeds: int = 1,
) -> dict:
    """Times and error AUROCs of one input; the AUROCs are means over ``auroc_seeds`` sampling
    seeds (one draw of T samples moves the AUROC by a few hundredths either way, as much as the
    goal's margin), the times those of seed 0."""
    device = device or torch.device("cpu")
    model, config = load_model(model_dir, device)
    inference = InferenceConfig(**config["inference"])
    dims = DataConfig(**config["data"]).spatial_dims
    image, truth = _test_input(kind, quick)
    image = image.to(device)
    sw = sw_batch_size or inference.sw_batch_size

    def run(mc: int, fast: bool):
        pred = UncertaintyPredictor([model], dims, mc_samples=mc, mc_batch=inference.mc_batch, fast=fast)
        return sliding_stats(image, pred, inference.roi_size, sw, inference.overlap, device=device).cpu()

    run(1, True)  # warm-up (cuDNN algorithm choice, allocator)
    t_det, _ = _time(lambda: run(1, True), repeats)
    aurocs = {"naive": [], "ours": []}
    times = {}
    for seed in range(auroc_seeds):
        for name, fast, reps in (("naive", False, 1), ("ours", True, repeats)):
            torch.manual_seed(seed)
            if seed == 0:
                times[name], stats = _time(lambda fast=fast: run(samples, fast), reps)
            else:
                stats = run(samples, fast)
            aurocs[name].append(_error_auroc(stats, truth))
    return {
        "shape": list(image.shape),
        "deterministic_s": t_det,
        "naive_s": times["naive"],
        "ours_s": times["ours"],
        "naive_ratio": times["naive"] / t_det,
        "ours_ratio": times["ours"] / t_det,
        "naive_error_auroc": float(np.mean(aurocs["naive"])),
        "ours_error_auroc": float(np.mean(aurocs["ours"])),
        "naive_error_auroc_seeds": aurocs["naive"],
        "ours_error_auroc_seeds": aurocs["ours"],
    }


PLACEMENTS = {
    "last decoder stage (default)": {"dropout": 0.0, "decoder_dropout": [0.0, 0.3]},
    "bottleneck + decoder": {"dropout": [0.0, 0.0, 0.3], "decoder_dropout": [0.3, 0.3]},
    "every stage": {"dropout": 0.3, "decoder_dropout": 0.3},
}


def bench_placements(kind: str, samples: int) -> dict:
    """``ours`` ratio for other dropout placements (cost only, untrained weights; naive costs
    about T whatever the placement)."""
    cfg = json.loads(
        json.dumps(
            {
                "malaria": {
                    "dims": 2,
                    "in": 3,
                    "out": 2,
                    "ch": [16, 32, 64],
                    "roi": [128, 128],
                    "norm": "batch",
                    "sw": 4,
                },
                "tumor": {
                    "dims": 3,
                    "in": 4,
                    "out": 4,
                    "ch": [8, 16, 32],
                    "roi": [48, 48, 48],
                    "norm": "instance",
                    "sw": 1,
                },
            }[kind]
        )
    )
    image, _ = _test_input(kind, True)
    image = image[(slice(None), *[slice(0, 256 if kind == "malaria" else 64)] * (image.dim() - 1))]
    rows = {}
    for name, drop in PLACEMENTS.items():
        torch.manual_seed(0)
        model = UNet(cfg["dims"], cfg["in"], cfg["out"], channels=cfg["ch"], norm=cfg["norm"], **drop)

        def run(mc, fast, model=model):
            pred = UncertaintyPredictor([model], cfg["dims"], mc_samples=mc, mc_batch=10, fast=fast)
            return sliding_stats(image, pred, cfg["roi"], cfg["sw"], 0.25)

        t_det, _ = _time(lambda: run(1, True), 2)
        t_ours, _ = _time(lambda: run(samples, True), 1)
        rows[name] = {"ours_ratio": t_ours / t_det}
    return rows


def peak_memory_brats(model_dir: Path, work: Path, samples: int) -> float:
    """Peak RSS (GB) of ``biocnn segment predict`` on a 4 x 240 x 240 x 155 case, T samples."""
    import nibabel as nib

    from biocnn.synthetic.tumor import MODALITIES, tumor_affine, tumor_volume

    case = work / "brats" / "brats_000"
    case.mkdir(parents=True, exist_ok=True)
    images, _ = tumor_volume(np.random.default_rng(3), (240, 240, 155))
    for mod, vol in zip(MODALITIES, images):
        nib.save(nib.Nifti1Image(vol, tumor_affine(vol.shape)), str(case / f"brats_000_{mod}.nii.gz"))
    del images
    code = "import sys\nfrom biocnn.cli import main\nif main(sys.argv[1:]):\n    sys.exit('predict failed')"
    return peak_rss_gb(
        code,
        [
            "segment",
            "predict",
            "--model",
            str(model_dir),
            "--input",
            str(case),
            "--out",
            str(work / "brats_pred"),
            "--mc-samples",
            str(samples),
        ],
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="segment_speed.json")
    parser.add_argument("--samples", type=int, default=20, help="T, Monte Carlo samples")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch CPU threads (1: stable timings on shared machines)"
    )
    parser.add_argument("--repeats", type=int, default=2, help="timing repeats (best of) for the fast runs")
    parser.add_argument(
        "--auroc-seeds",
        type=int,
        default=3,
        help="sampling seeds the error AUROCs are averaged over (3D naive costs ~T passes each)",
    )
    parser.add_argument("--epochs", type=int, default=10, help="training epochs for the generated models")
    parser.add_argument("--model-2d", type=Path, help="malaria model directory (default: train one here)")
    parser.add_argument("--model-3d", type=Path, help="tumor model directory (default: train one here)")
    parser.add_argument("--quick", action="store_true", help="smaller inputs (512^2, 96^3) for a smoke run")
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto for the timed passes")
    parser.add_argument("--sw-batch-size", type=int, help="windows per batch (default: the model's config)")
    parser.add_argument(
        "--placements", action="store_true", help="also time ours for other dropout placements (256^2 and 64^3 crops)"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = select_device(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        models = {
            "malaria": args.model_2d or _train("malaria", work, args.epochs),
            "tumor": args.model_3d or _train("tumor", work, args.epochs),
        }
        result = {}
        for key, kind in (("2d", "malaria"), ("3d", "tumor")):
            result[key] = bench_kind(
                kind, models[kind], args.samples, args.repeats, args.quick, device, args.sw_batch_size, args.auroc_seeds
            )
            print(key, json.dumps(result[key]), flush=True)
        if args.placements:
            result["placements"] = {
                k: bench_placements(kind, args.samples) for k, kind in (("2d", "malaria"), ("3d", "tumor"))
            }
        result["peak_rss_gb_brats_volume"] = (
            None if args.skip_memory else peak_memory_brats(models["tumor"], work, args.samples)
        )
    result["settings"] = {
        "samples": args.samples,
        "threads": args.threads,
        "quick": args.quick,
        "auroc_seeds": args.auroc_seeds,
        "device": str(device),
        "sw_batch_size": args.sw_batch_size,
        "torch": torch.__version__,
    }
    print(
        f"\nT = {args.samples} Monte Carlo samples, ratios = time / one deterministic pass "
        f"({device}, {args.threads} CPU thread(s)); error AUROC: mean (and each) of {args.auroc_seeds} "
        "sampling seed(s)\n"
    )
    print(
        "| input | deterministic (s) | naive ratio | ours ratio | naive error AUROC | ours error AUROC | difference |"
    )
    print("|---|---|---|---|---|---|---|")
    for key in ("2d", "3d"):
        r = result[key]
        each = {m: " / ".join(f"{a:.3f}" for a in r[f"{m}_error_auroc_seeds"]) for m in ("naive", "ours")}
        print(
            f"| {key} {'x'.join(map(str, r['shape'][1:]))} | {r['deterministic_s']:.2f} | {r['naive_ratio']:.1f}x | "
            f"{r['ours_ratio']:.2f}x | {r['naive_error_auroc']:.3f} ({each['naive']}) | "
            f"{r['ours_error_auroc']:.3f} ({each['ours']}) | "
            f"{r['ours_error_auroc'] - r['naive_error_auroc']:+.3f} |"
        )
    if args.placements:
        print("\nOurs for other dropout placements (untrained weights, 256^2 and 64^3 inputs)\n")
        print("| placement | 2d ours ratio | 3d ours ratio |")
        print("|---|---|---|")
        for name in PLACEMENTS:
            a, b = result["placements"]["2d"][name], result["placements"]["3d"][name]
            print(f"| {name} | {a['ours_ratio']:.2f}x | {b['ours_ratio']:.2f}x |")
    peak = result["peak_rss_gb_brats_volume"]
    print(
        f"\npeak RSS, predict on 4 x 240 x 240 x 155 with T = {args.samples}: "
        + (f"{peak:.2f} GB" if peak is not None else "skipped")
    )
    write_json(args.out, result)  # atomic, like every biocnn output


if __name__ == "__main__":
    main()
