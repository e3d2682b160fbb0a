"""Speed of ``biocnn mammo score`` on full-field mammograms: decoding and inference overlap.

    python benchmarks/mammo_score_speed.py --out mammo_score_speed.json [--exams 4 --workers 1]

Generates full-size images (3328 x 2560, 16-bit stored, uncompressed), then measures in the
same run, with the same DataLoader settings:

* decode-only: read + VOI + crop + resize every file in the loader workers, no model;
* model-only: the demo view classifier on the already-decoded inputs (batch 8);
* end-to-end: ``score`` itself (fresh output folder), decoding in the workers while the main
  process runs the model.

Goal: end-to-end <= 1.2 x the slower of decode-only and model-only. The model has the demo
architecture (configs/mammo_demo.yaml) with untrained weights unless ``--model`` names a
trained one: the weights do not change the cost. JSON keys: ``end_to_end_s``,
``decode_only_s``, ``model_only_s``, ``ratio``, ``images``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from biocnn.checkpoint import load_model, save_model  # noqa: E402
from biocnn.config import load_config  # noqa: E402
from biocnn.device import autocast, select_device  # noqa: E402
from biocnn.io.atomic import write_json  # noqa: E402
from biocnn.mammo.config import MammoConfig  # noqa: E402
from biocnn.mammo.data import DecodeDataset, collate_decoded  # noqa: E402
from biocnn.mammo.evaluate import input_spec  # noqa: E402
from biocnn.mammo.score import default_workers, list_inputs, score  # noqa: E402
from biocnn.mammo.train import OPERATING_POINT, model_spec  # noqa: E402
from biocnn.models import build_model  # noqa: E402
from biocnn.synthetic.mammo import synthesize  # noqa: E402


def untrained_model(directory: Path, config_file: Path) -> Path:
    """A model directory with the demo architecture and random weights."""
    cfg = load_config(config_file, MammoConfig, {"data.manifest": "unused.csv"})
    spec = model_spec(cfg)
    torch.manual_seed(0)
    save_model(
        directory, build_model(spec), {"model": spec, "input": cfg.input.model_dump(), "aggregate": cfg.aggregate}
    )
    write_json(directory / OPERATING_POINT, {"threshold": 0.5, "chosen_on": "none (speed benchmark)"})
    return directory


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True)
    parser.add_argument("--exams", type=int, default=4, help="four full-size images each")
    parser.add_argument("--workers", type=int, default=default_workers())
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--model", help="a trained model directory (default: untrained demo architecture)")
    parser.add_argument("--config", default=str(REPO / "configs" / "mammo_demo.yaml"))
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        t = time.perf_counter()
        synthesize(tmp / "data", args.exams, seed=3, rows=3328, cols=2560, tomo=0, syntax="native", bits=16)
        print(f"generated {args.exams * 4} full-size images in {time.perf_counter() - t:.0f} s", file=sys.stderr)
        model_dir = Path(args.model) if args.model else untrained_model(tmp / "model", Path(args.config))
        device = select_device(args.device)
        model, config = load_model(model_dir, device)
        size, depth, spatial_dims = input_spec(config)
        files = list_inputs(tmp / "data" / "dicom")[1].files
        n = len(files)

        def loader() -> DataLoader:
            return DataLoader(
                DecodeDataset(files, size, depth, spatial_dims),
                batch_size=args.batch_size,
                num_workers=args.workers,
                collate_fn=collate_decoded,
                prefetch_factor=4 if args.workers else None,
            )

        # Decode only: what the workers deliver when nothing else runs.
        t = time.perf_counter()
        batches = [b["images"] for b in loader()]
        decode_s = time.perf_counter() - t
        # Model only: the same batches, already decoded.
        with torch.no_grad(), autocast(device):
            model(batches[0].to(device))  # warm-up (allocations, cuDNN)
            if device.type == "cuda":
                torch.cuda.synchronize()
            t = time.perf_counter()
            for x in batches:
                torch.sigmoid(model(x.to(device)).float()).cpu()
            if device.type == "cuda":
                torch.cuda.synchronize()
            model_s = time.perf_counter() - t
        # End to end: the clinicians' command, overlapping both.
        t = time.perf_counter()
        summary = score(
            model_dir,
            tmp / "data" / "dicom",
            tmp / "scores",
            workers=args.workers,
            batch_size=args.batch_size,
            device=args.device,
            progress=False,
        )
        end_s = time.perf_counter() - t
        assert summary["scored"] == n, summary

    slower = max(decode_s, model_s)
    ratio = end_s / slower
    print(
        f"\nmammo score speed: {n} images of 3328 x 2560 (16-bit), {args.workers} decoding worker(s), device {device}\n"
    )
    print("| stage | seconds | images/s | vs slower stage |")
    print("|---|---|---|---|")
    for name, s in (("decode only", decode_s), ("model only", model_s), ("end to end (score)", end_s)):
        print(f"| {name} | {s:.2f} | {n / s:.2f} | {s / slower:.2f} |")
    print(f"\nratio end-to-end / slower = {ratio:.2f} (goal <= 1.2): {'met' if ratio <= 1.2 else 'NOT met'}")
    write_json(
        args.out,
        {
            "end_to_end_s": end_s,
            "decode_only_s": decode_s,
            "model_only_s": model_s,
            "ratio": ratio,
            "images": n,
            "workers": args.workers,
            "device": str(device),
            "batch_size": args.batch_size,
            "goal_met": ratio <= 1.2,
        },
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
