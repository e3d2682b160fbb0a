"""``biocnn mammo score``: clinicians' batch scoring of a folder of studies (or a manifest).

Output folder::

    scores.csv     one row per scored image: file, patient, study, laterality, view,
                   probability, flagged (at the model's stored operating point), heatmap
    exams.csv      one row per exam and breast: breast and exam probabilities, flags
    failures.csv   one row per file not scored, with the reason
    summary.json   files seen = scored + failed, rates, model, threshold
    heatmaps/      Grad-CAM overlays (with --heatmaps)

Privacy: patient names are never read into the outputs; patient and study IDs are replaced by
a keyed hash (HMAC-SHA256) unless ``--keep-ids``. The key is read from ``--key-file``, else
from the ``BIOCNN_PSEUDONYM_KEY`` environment variable, else created once as
``OUT/.pseudonym.key`` (mode 600) so later runs give the same pseudonyms; keep that file back
when sharing the outputs.

Re-runs: files already listed in ``scores.csv`` or ``failures.csv`` are not scored again
unless ``--force``; new results are merged in and every table is rewritten atomically.
Decoding runs in DataLoader worker processes while the main process runs the model, so the
two overlap; the progress bar counts images per second.
"""

from __future__ import annotations

import csv
import hashlib
import hmac
import logging
import os
import secrets
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from biocnn.checkpoint import load_model, read_model_config
from biocnn.device import autocast, select_device, torch_threads
from biocnn.errors import InputError
from biocnn.io.atomic import atomic_open, write_json, write_text
from biocnn.mammo import metrics as M
from biocnn.mammo.data import DecodeDataset, collate_decoded
from biocnn.mammo.evaluate import input_spec
from biocnn.mammo.gradcam import grad_cam, overlay_png
from biocnn.mammo.platt import calibrated_probs
from biocnn.mammo.train import read_operating_point

log = logging.getLogger(__name__)

SCORE_COLUMNS = ("file", "patient", "study", "laterality", "view", "probability", "flagged", "heatmap")
EXAM_COLUMNS = (
    "patient",
    "study",
    "laterality",
    "views",
    "breast_probability",
    "breast_flagged",
    "exam_probability",
    "exam_flagged",
)
FAILURE_COLUMNS = ("file", "reason")
KEY_FILE = ".pseudonym.key"
SKIP_NAMES = {KEY_FILE}


# --------------------------------------------------------------------------- inputs
def list_inputs(source: str | Path, out: Path | None = None) -> tuple[Path, list[Path]]:
    """The files to score and the root their names are given relative to.

    A folder is walked recursively (hidden files and the output folder skipped); a ``.csv``
    is read as a manifest (its ``path`` column, relative to the manifest's folder).
    """
    source = Path(source)
    if source.is_dir():
        files = []
        out_resolved = out.resolve() if out is not None else None
        for dirpath, dirnames, filenames in os.walk(source):
            here = Path(dirpath)
            dirnames[:] = sorted(
                d
                for d in dirnames
                if not d.startswith(".") and (out_resolved is None or (here / d).resolve() != out_resolved)
            )
            files += [here / f for f in sorted(filenames) if not f.startswith(".") and f not in SKIP_NAMES]
        return source, files
    if source.is_file() and source.suffix.lower() == ".csv":
        with open(source, newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            if "path" not in (reader.fieldnames or []):
                raise InputError(source, "a manifest needs a 'path' column")
            files = [Path(r["path"]) if Path(r["path"]).is_absolute() else source.parent / r["path"] for r in reader]
        return source.parent, files
    if source.is_file():
        return source.parent, [source]
    raise InputError(source, "no such file or directory")


def relative_name(path: Path, root: Path) -> str:
    try:
        return path.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return str(path)


# --------------------------------------------------------------------------- privacy
def load_key(out: Path, key_file: str | Path | None = None) -> bytes:
    """The pseudonymisation key (see the module docstring for where it comes from)."""
    if key_file is not None:
        key = Path(key_file).read_bytes().strip()
        if len(key) < 16:
            raise InputError(key_file, "pseudonymisation key is shorter than 16 bytes")
        return key
    env = os.environ.get("BIOCNN_PSEUDONYM_KEY")
    if env:
        return env.encode()
    path = out / KEY_FILE
    if not path.is_file():
        out.mkdir(parents=True, exist_ok=True)
        write_text(path, secrets.token_hex(32))
        os.chmod(path, 0o600)
    return path.read_text().strip().encode()


class Pseudonymiser:
    """Keyed hash of identifiers: the same ID and key always give the same pseudonym."""

    def __init__(self, key: bytes | None):
        self.key = key  # None: keep the IDs

    def __call__(self, value: str, prefix: str) -> str:
        if self.key is None or not value:
            return value
        digest = hmac.new(self.key, f"{prefix}:{value}".encode(), hashlib.sha256).hexdigest()
        return f"{prefix}-{digest[:16]}"


# --------------------------------------------------------------------------- tables
def _read_table(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        return []
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def _write_table(path: Path, columns: Iterable[str], rows: list[dict[str, Any]]) -> None:
    with atomic_open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(columns), extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def exam_table(scores: list[dict[str, Any]], how: str, threshold: float) -> list[dict[str, Any]]:
    """One row per exam and breast from the per-image rows."""
    rows = [dict(r, probability=float(r["probability"])) for r in scores]
    breasts, exams = M.aggregate(rows, how)
    exam_prob = {e["study"]: e["probability"] for e in exams}
    return [
        {
            "patient": b["patient"],
            "study": b["study"],
            "laterality": b["laterality"],
            "views": b["views"],
            "breast_probability": f"{b['probability']:.6f}",
            "breast_flagged": int(b["probability"] >= threshold),
            "exam_probability": f"{exam_prob[b['study']]:.6f}",
            "exam_flagged": int(exam_prob[b["study"]] >= threshold),
        }
        for b in breasts
    ]


# --------------------------------------------------------------------------- scoring
def default_workers() -> int:
    """Decoding workers: all cores but the one running the model (at least one)."""
    return max(1, min(8, (os.cpu_count() or 2) - 1))


def score(
    model_dir: str | Path,
    source: str | Path,
    out: str | Path,
    heatmaps: bool = False,
    keep_ids: bool = False,
    force: bool = False,
    workers: int | None = None,
    batch_size: int = 8,
    device: str = "auto",
    key_file: str | Path | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Score every file under ``source`` with ``model_dir``; see the module docstring."""
    from tqdm.auto import tqdm

    out = Path(out)
    dev = select_device(device)
    config = read_model_config(model_dir)
    op = read_operating_point(model_dir)
    threshold, calibration = float(op["threshold"]), op.get("calibration")
    how = config.get("aggregate", "mean")
    size, depth, spatial_dims = input_spec(config)
    root, files = list_inputs(source, out)
    pseudo = Pseudonymiser(None if keep_ids else load_key(out, key_file))

    old_scores = [] if force else _read_table(out / "scores.csv")
    old_failures = [] if force else _read_table(out / "failures.csv")
    names = [relative_name(f, root) for f in files]
    done = {r["file"] for r in old_scores} | {r["file"] for r in old_failures}
    todo = [i for i, n in enumerate(names) if n not in done]
    log.info("%d files found, %d already done, %d to score", len(files), len(files) - len(todo), len(todo))

    workers = default_workers() if workers is None else workers
    # Leave the cores the decoding workers use to them; inference gets what remains.
    threads = max(1, (os.cpu_count() or 2) - workers) if dev.type == "cpu" and workers > 0 else None
    with torch_threads(threads):
        dataset = DecodeDataset([files[i] for i in todo], size, depth, spatial_dims)
        loader = DataLoader(
            dataset,
            batch_size=batch_size,
            num_workers=workers,
            collate_fn=collate_decoded,
            prefetch_factor=4 if workers else None,
            persistent_workers=False,
            pin_memory=dev.type == "cuda",
        )
        new_scores: list[dict[str, Any]] = []
        new_failures: list[dict[str, Any]] = []
        start = time.perf_counter()
        bar = tqdm(total=len(todo), desc="scoring", unit="img", disable=not progress, mininterval=1.0)
        batches = iter(loader)  # the workers start decoding now, while the model loads
        model, config = load_model(model_dir, dev)
        for batch in batches:
            for index, reason in batch["failed"]:
                new_failures.append({"file": names[todo[index]], "reason": reason})
            if batch["images"] is not None:
                x = batch["images"].to(dev, non_blocking=True)
                with autocast(dev):
                    if heatmaps:
                        logits, cams = grad_cam(model, x)
                        cams = cams.cpu().numpy()
                    else:
                        with torch.no_grad():
                            logits = model(x)
                probs = calibrated_probs(logits, calibration)
                for j, (item, p) in enumerate(zip(batch["ok"], probs)):
                    meta = item.meta
                    name = names[todo[item.index]]
                    study = pseudo(meta["study_id"], "S")
                    row = {
                        "file": name,
                        "patient": pseudo(meta["patient_id"], "P"),
                        "study": study,
                        "laterality": meta["laterality"],
                        "view": meta["view"],
                        "probability": f"{p:.6f}",
                        "flagged": int(p >= threshold),
                        "heatmap": "",
                    }
                    if heatmaps:
                        sop = pseudo(meta["sop_id"], "I") if not keep_ids else meta["sop_id"]
                        rel = Path("heatmaps") / study / f"{meta['laterality']}_{meta['view'] or 'NA'}_{sop}.png"
                        overlay_png(item.image, cams[j], out / rel, f"{meta['laterality']} {meta['view']} p={p:.2f}")
                        row["heatmap"] = rel.as_posix()
                    new_scores.append(row)
            bar.update(len(batch["ok"]) + len(batch["failed"]))
        bar.close()
    elapsed = time.perf_counter() - start

    rescored = {r["file"] for r in new_scores} | {r["file"] for r in new_failures}
    scores = [r for r in old_scores if r["file"] not in rescored] + new_scores
    failures = [r for r in old_failures if r["file"] not in rescored] + new_failures
    scores.sort(key=lambda r: r["file"])
    failures.sort(key=lambda r: r["file"])
    _write_table(out / "scores.csv", SCORE_COLUMNS, scores)
    _write_table(out / "failures.csv", FAILURE_COLUMNS, failures)
    _write_table(out / "exams.csv", EXAM_COLUMNS, exam_table(scores, how, threshold))
    summary = {
        "files_seen": len(scores) + len(failures),
        "scored": len(scores),
        "failed": len(failures),
        "this_run": {
            "files_found": len(files),
            "skipped_done": len(files) - len(todo),
            "scored": len(new_scores),
            "failed": len(new_failures),
            "seconds": elapsed,
            "images_per_second": len(todo) / elapsed if elapsed > 0 else None,
            "workers": workers,
        },
        "exams": len({r["study"] for r in scores}),
        "flagged_images": sum(int(r["flagged"]) for r in scores),
        "threshold": threshold,
        "aggregate": how,
        "model": str(model_dir),
        "pseudonymised": not keep_ids,
        "device": str(dev),
    }
    write_json(out / "summary.json", summary)
    return summary
