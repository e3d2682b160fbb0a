"""``biocnn mammo score``: clinicians' batch scoring of a folder of studies (or a manifest).

Output folder::

    scores.csv     one row per scored image: file, patient, study, laterality, view,
                   probability, flagged (at the model's stored operating point), heatmap
    exams.csv      one row per exam and breast: breast and exam probabilities, flags, the
                   standard views the breast lacks and the breasts the exam has
    failures.csv   one row per file not scored, with the reason
    summary.json   files seen = scored + failed, rates, model, threshold
    heatmaps/      heatmap overlays (with --heatmaps): the patch model's window map, or Grad-CAM

Privacy: patient names are never read into the outputs; patient and study IDs are replaced by
a keyed hash (HMAC-SHA256) unless ``--keep-ids``. The key is read from ``--key-file``, else
from the ``BIOCNN_PSEUDONYM_KEY`` environment variable, else created once as
``OUT/.pseudonym.key`` (mode 600) so later runs give the same pseudonyms; keep that file back
when sharing the outputs.

Inputs: a folder is walked recursively, following links to folders (each folder once); every
entry is scored, listed in ``failures.csv`` with its reason (unreadable folders and broken
links too), or counted in ``summary.json`` under ``skipped`` (hidden entries, the output
folder, a folder reached a second time).

Re-runs: files already listed in ``scores.csv`` or ``failures.csv`` are not scored again
unless ``--force``; new results are merged in and every table is rewritten atomically. Finished
rows are appended to ``OUT/.progress.jsonl`` as they complete, so a killed run's re-run scores
only what is left. One run at a time holds the output folder (a lock file in it); a second is
refused with one line. Heatmap paths are made of sanitised identifiers and a hash of the file's
name, checked to stay inside ``OUT/heatmaps``.

Flags: a probability is written with 6 decimals, and every flag (image, breast, exam) is
decided on the written value, exactly (``written >= threshold``), so the tables agree with each
other and with a reader who re-checks them.

Decoding runs in DataLoader worker processes while the main process runs the model, so the
two overlap; the progress bar counts images per second.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import hashlib
import hmac
import logging
import os
import secrets
import time
from collections.abc import Iterable, Iterator
from fractions import Fraction
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from biocnn.checkpoint import CONFIG, load_model, read_model_config
from biocnn.device import autocast, select_device, torch_threads
from biocnn.errors import CheckpointError, InputError
from biocnn.io.atomic import atomic_open, write_json
from biocnn.io.journal import Journal, output_lock
from biocnn.io.paths import ensure_writable_dir, inside, safe_component
from biocnn.io.walk import Walk, walk_files
from biocnn.mammo.data import DecodeDataset, collate_decoded, surviving_workers, worker_init
from biocnn.mammo.evaluate import input_spec
from biocnn.mammo.gradcam import overlay_png
from biocnn.mammo.heatmap import view_heatmaps
from biocnn.mammo.platt import calibrated_probs
from biocnn.mammo.train import read_operating_point

log = logging.getLogger(__name__)

SCORE_COLUMNS = ("file", "patient", "study", "laterality", "view", "probability", "flagged", "heatmap")
EXAM_COLUMNS = (
    "patient",
    "study",
    "laterality",
    "views",
    "missing_views",
    "breast_probability",
    "breast_flagged",
    "exam_breasts",
    "exam_probability",
    "exam_flagged",
)
STANDARD_VIEWS = ("CC", "MLO")  # a screening exam's views of each breast
FAILURE_COLUMNS = ("file", "reason")
KEY_FILE = ".pseudonym.key"
PROGRESS_FILE = ".progress.jsonl"
DECIMALS = 6


# --------------------------------------------------------------------------- inputs
def list_inputs(source: str | Path, out: Path | None = None) -> tuple[Path, Walk]:
    """The files to score, the entries that failed or were skipped, and the root names are relative to.

    A folder is walked recursively (:func:`biocnn.io.walk.walk_files`; hidden entries and the
    output folder skipped); a ``.csv`` is read as a manifest (its ``path`` column, relative to
    the manifest's folder).
    """
    source = Path(source)
    if source.is_dir():
        return source, walk_files(source, exclude=[out] if out is not None else [])
    if source.is_file() and source.suffix.lower() == ".csv":
        try:
            with open(source, newline="", encoding="utf-8") as fh:
                reader = csv.DictReader(fh)
                if "path" not in (reader.fieldnames or []):
                    raise InputError(source, "a manifest needs a 'path' column")
                paths = [r["path"] or "" for r in reader]
        except (OSError, UnicodeDecodeError, csv.Error) as exc:
            raise InputError(source, f"cannot read the manifest ({exc})") from None
        files = [Path(p) if Path(p).is_absolute() else source.parent / p for p in paths]
        return source.parent, Walk(files=files)
    if source.is_file():
        return source.parent, Walk(files=[source])
    raise InputError(source, "no such file or directory")


def relative_name(path: Path, root: Path) -> str:
    """``path`` relative to ``root`` as walked (links kept), else resolved, else as given."""
    try:
        rel = path.relative_to(root)
        if ".." not in rel.parts:
            return rel.as_posix()
    except ValueError:
        pass
    try:
        return path.resolve().relative_to(root.resolve()).as_posix()
    except (ValueError, RuntimeError, OSError):  # outside the root, or a link loop
        return str(path)


# --------------------------------------------------------------------------- privacy
def _create_once(path: Path, text: str) -> None:
    """Create ``path`` holding ``text`` (mode 600) unless it exists; of two racing runs one wins
    and both then read the same file."""
    tmp = path.with_name(f"{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    _write_new(tmp, text)
    try:
        os.link(tmp, path)  # atomic, complete, and fails if another run created the key first
    except FileExistsError:
        pass
    except OSError:  # a filesystem without hard links (FAT, some network shares)
        with contextlib.suppress(FileExistsError):
            _write_new(path, text)
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)


def _write_new(path: Path, text: str) -> None:
    """Write ``text`` to a file that must not exist yet (mode 600)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, text.encode())
        os.fsync(fd)
    finally:
        os.close(fd)


def load_key(out: Path, key_file: str | Path | None = None) -> bytes:
    """The pseudonymisation key (see the module docstring for where it comes from)."""
    if key_file is not None:
        try:
            key = Path(key_file).read_bytes().strip()
        except OSError as exc:
            raise InputError(key_file, f"cannot read the key file ({exc.strerror or exc})") from None
        if len(key) < 16:
            raise InputError(key_file, "pseudonymisation key is shorter than 16 bytes")
        return key
    env = os.environ.get("BIOCNN_PSEUDONYM_KEY")
    if env:
        return env.encode()
    path = out / KEY_FILE
    try:
        if not path.exists():
            _create_once(path, secrets.token_hex(32))
        key = path.read_bytes().strip()
    except OSError as exc:
        raise InputError(path, f"cannot create or read the pseudonymisation key ({exc.strerror or exc})") from None
    if len(key) < 16:
        raise InputError(path, "pseudonymisation key is shorter than 16 bytes (damaged? restore it from a copy)")
    return key


class Pseudonymiser:
    """Keyed hash of identifiers: the same ID and key always give the same pseudonym."""

    def __init__(self, key: bytes | None):
        self.key = key  # None: keep the IDs

    def __call__(self, value: str, prefix: str) -> str:
        if self.key is None or not value:
            return value
        digest = hmac.new(self.key, f"{prefix}:{value}".encode(), hashlib.sha256).hexdigest()
        return f"{prefix}-{digest[:16]}"


def heatmap_path(out: Path, name: str, study: str, laterality: str, view: str, sop: str) -> tuple[Path, Path]:
    """Where the heatmap of the file ``name`` goes: ``(relative, absolute)``, inside ``out/heatmaps``.

    Identifiers come from the file, so each is made a safe file name; the hash of the file's
    name keeps two images with the same (or no) UIDs apart.
    """
    tag = hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()[:10]
    rel = Path(
        "heatmaps",
        safe_component(study or "no-study"),
        safe_component(f"{laterality}_{view or 'NA'}_{sop or 'no-uid'}_{tag}") + ".png",
    )
    return rel, inside(out / "heatmaps", *rel.parts[1:])


# --------------------------------------------------------------------------- tables
@contextlib.contextmanager
def _writing(path: Path) -> Iterator[None]:
    """An ``OSError`` while writing ``path`` (read-only folder, full disk) as one line naming it."""
    try:
        yield
    except OSError as exc:
        reason = exc.strerror or str(exc)
        hint = "; the finished rows are kept, run again to go on" if exc.errno == errno.ENOSPC else ""
        raise InputError(path, f"cannot write ({reason}){hint}") from None


def _read_table(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        return []
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            return list(csv.DictReader(fh))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise InputError(path, f"cannot read the earlier results ({exc}); use --force or another --out") from None


def _write_table(path: Path, columns: Iterable[str], rows: list[dict[str, Any]]) -> None:
    with _writing(path), atomic_open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(columns), extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def written(probability: float | Fraction) -> str:
    """A probability as the tables hold it (6 decimals)."""
    return f"{float(probability):.{DECIMALS}f}"


def flagged(probability: str, threshold: float) -> int:
    """1 when the written ``probability`` is at or above ``threshold``, compared exactly."""
    return int(Fraction(probability) >= Fraction(threshold))


def exam_table(scores: list[dict[str, Any]], how: str, threshold: float) -> list[dict[str, Any]]:
    """One row per exam and breast from the per-image rows.

    A breast's probability is the mean (or max) of its views' written probabilities, an exam's
    the max of its breasts', each computed exactly and rounded to 6 decimals (a mean rounds to a
    value between its views', so all views flagged means the breast is flagged and none flagged
    means it is not).

    Missing views and breasts: only what was scored counts. A breast with one view (MIAS has
    only MLO) scores that view; a breast with no scored view has no row, and an exam with one
    breast scores that breast. Nothing is imputed, and each row says what it rests on:
    ``missing_views`` lists the standard views (CC, MLO) the breast lacks, ``exam_breasts``
    the breasts the exam has (``L,R``, ``L`` or ``R``).
    """
    if how not in ("mean", "max"):
        raise ValueError(f"aggregate must be 'mean' or 'max', got {how!r}")
    breasts: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in scores:
        breasts.setdefault((r["study"], r["laterality"]), []).append(r)
    breast_prob: dict[tuple[str, str], Fraction] = {}
    for key, members in breasts.items():
        values = [Fraction(str(m["probability"])) for m in members]
        breast_prob[key] = round(sum(values) / len(values) if how == "mean" else max(values), DECIMALS)
    exam_prob: dict[str, Fraction] = {}
    exam_breasts: dict[str, set[str]] = {}
    for (study, laterality), p in breast_prob.items():
        exam_prob[study] = max(exam_prob.get(study, p), p)
        exam_breasts.setdefault(study, set()).add(laterality)
    rows = []
    for (study, laterality), members in sorted(breasts.items()):
        b, e = written(breast_prob[study, laterality]), written(exam_prob[study])
        views = sorted(m.get("view", "") for m in members)
        rows.append(
            {
                "patient": members[0].get("patient", ""),
                "study": study,
                "laterality": laterality,
                "views": ",".join(views),
                "missing_views": ",".join(v for v in STANDARD_VIEWS if v not in views),
                "breast_probability": b,
                "breast_flagged": flagged(b, threshold),
                "exam_breasts": ",".join(sorted(exam_breasts[study])),
                "exam_probability": e,
                "exam_flagged": flagged(e, threshold),
            }
        )
    return rows


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
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    workers = default_workers() if workers is None else workers
    if workers < 0:
        raise ValueError(f"workers must be 0 or more, got {workers}")
    out = Path(out)
    dev = select_device(device)
    config = read_model_config(model_dir)
    op = read_operating_point(model_dir)
    threshold, calibration = float(op["threshold"]), op.get("calibration")
    how = config.get("aggregate", "mean")
    if how not in ("mean", "max"):
        raise CheckpointError(f"{Path(model_dir) / CONFIG}: aggregate must be 'mean' or 'max', got {how!r}")
    size, depth, spatial_dims = input_spec(config)
    ensure_writable_dir(out)  # before any work: a read-only or missing output stops here
    with output_lock(out, "biocnn mammo score"):
        root, found = list_inputs(source, out)
        files = found.files
        pseudo = Pseudonymiser(None if keep_ids else load_key(out, key_file))

        journal = Journal(out / PROGRESS_FILE)
        old_scores = [] if force else _read_table(out / "scores.csv")
        old_failures = [] if force else _read_table(out / "failures.csv")
        resumed = [] if force else Journal.read(journal.path)
        if resumed:
            log.info("%s: going on from an interrupted run (%d rows finished)", journal.path, len(resumed))
        # The walk's failures are found again on every run; an old one whose folder is readable now goes.
        walk_failures = [{"file": relative_name(p, root), "reason": why} for p, why in found.failures]
        walk_failed = {r["file"] for r in walk_failures}
        old_failures = [r for r in old_failures if r["file"] in walk_failed or not (root / r["file"]).is_dir()]
        old_scores = _merge(old_scores, _rows(resumed, "score"))
        old_failures = _merge(old_failures, _rows(resumed, "failure") + walk_failures)

        names = [relative_name(f, root) for f in files]
        done = {r["file"] for r in old_scores} | {r["file"] for r in old_failures}
        todo = [i for i, n in enumerate(names) if n not in done]
        log.info(
            "%d files found, %d already done, %d to score; walking: %d entries failed, %d skipped",
            len(files),
            len(files) - len(todo),
            len(todo),
            len(found.failures),
            len(found.skipped),
        )
        for path, why in found.skipped:
            log.debug("skipped %s: %s", path, why)

        journal.open(resumed)
        try:
            start = time.perf_counter()
            new_scores, new_failures = _score_files(
                model_dir,
                [files[i] for i in todo],
                [names[i] for i in todo],
                (size, depth, spatial_dims),
                dev,
                calibration,
                threshold,
                heatmaps,
                keep_ids,
                pseudo,
                out,
                journal,
                workers,
                batch_size,
                progress,
            )
            elapsed = time.perf_counter() - start
            scores = sorted(_merge(old_scores, new_scores), key=lambda r: r["file"])
            failures = sorted(_merge(old_failures, new_failures), key=lambda r: r["file"])
            _write_table(out / "scores.csv", SCORE_COLUMNS, scores)
            _write_table(out / "failures.csv", FAILURE_COLUMNS, failures)
            _write_table(out / "exams.csv", EXAM_COLUMNS, exam_table(scores, how, threshold))
            summary = {
                "files_seen": len(scores) + len(failures),
                "scored": len(scores),
                "failed": len(failures),
                "skipped": len(found.skipped),
                "skipped_reasons": found.skipped_counts(),
                "this_run": {
                    "files_found": len(files),
                    "skipped_done": len(files) - len(todo),
                    "resumed": len(resumed),
                    "walk_failures": len(found.failures),
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
            with _writing(out / "summary.json"):
                write_json(out / "summary.json", summary)
        except BaseException:
            journal.close()  # kept: a re-run goes on from it
            raise
        journal.remove()
    return summary


def _score_files(
    model_dir,
    files,
    names,
    spec,
    dev,
    calibration,
    threshold,
    heatmaps,
    keep_ids,
    pseudo,
    out,
    journal,
    workers,
    batch_size,
    progress,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Decode (in worker processes) and score ``files``; every finished row goes to ``journal``."""
    from tqdm.auto import tqdm

    size, depth, spatial_dims = spec
    # Leave the cores the decoding workers use to them; inference gets what remains.
    threads = max(1, (os.cpu_count() or 2) - workers) if dev.type == "cpu" and workers > 0 else None
    new_scores: list[dict[str, Any]] = []
    new_failures: list[dict[str, Any]] = []
    with torch_threads(threads):
        loader = DataLoader(
            DecodeDataset(files, size, depth, spatial_dims),
            batch_size=batch_size,
            num_workers=workers,
            collate_fn=collate_decoded,
            prefetch_factor=4 if workers else None,
            persistent_workers=False,
            pin_memory=dev.type == "cuda",
            worker_init_fn=worker_init() if workers else None,
        )
        bar = tqdm(total=len(files), desc="scoring", unit="img", disable=not progress, mininterval=1.0)
        with bar:  # closed on an error too, so the error line starts on a line of its own
            batches = iter(loader)  # the workers start decoding now, while the model loads
            model, _ = load_model(model_dir, dev)
            for batch in surviving_workers(batches, f"the finished rows are kept in {out}: run again to go on"):
                finished = []
                for index, reason in batch["failed"]:
                    row = {"file": names[index], "reason": reason}
                    new_failures.append(row)
                    finished.append({"failure": row})
                if batch["images"] is not None:
                    batch_names = [names[item.index] for item in batch["ok"]]
                    for row in _score_batch(
                        model, batch, batch_names, dev, calibration, threshold, heatmaps, keep_ids, pseudo, out
                    ):
                        new_scores.append(row)
                        finished.append({"score": row})
                journal.append(finished)
                bar.update(len(batch["ok"]) + len(batch["failed"]))
    return new_scores, new_failures


def _rows(records: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    """The ``kind`` rows ("score" or "failure") of journal records (damaged ones left out)."""
    rows = [r.get(kind) for r in records]
    return [r for r in rows if isinstance(r, dict) and isinstance(r.get("file"), str)]


def _merge(old: list[dict[str, Any]], new: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``old`` rows with the files in ``new`` replaced by the new rows (one row per file)."""
    by_file = {r["file"]: r for r in old}
    by_file.update({r["file"]: r for r in new})
    return list(by_file.values())


def _score_batch(model, batch, names, dev, calibration, threshold, heatmaps, keep_ids, pseudo, out):
    """The table rows of one decoded batch (writing the heatmaps on the way)."""
    x = batch["images"].to(dev, non_blocking=True)
    with autocast(dev):
        if heatmaps:
            logits, cams = view_heatmaps(model, x)
            cams = cams.cpu().numpy()
        else:
            with torch.no_grad():
                logits = model(x)
    probs = calibrated_probs(logits, calibration)
    rows = []
    for j, (item, p, name) in enumerate(zip(batch["ok"], probs, names)):
        meta = item.meta
        study = pseudo(meta["study_id"], "S")
        probability = written(p)
        row = {
            "file": name,
            "patient": pseudo(meta["patient_id"], "P"),
            "study": study,
            "laterality": meta["laterality"],
            "view": meta["view"],
            "probability": probability,
            "flagged": flagged(probability, threshold),
            "heatmap": "",
        }
        if heatmaps:
            sop = meta["sop_id"] if keep_ids else pseudo(meta["sop_id"], "I")
            rel, path = heatmap_path(out, name, study, meta["laterality"], meta["view"], sop)
            with _writing(path):
                overlay_png(item.image, cams[j], path, f"{meta['laterality']} {meta['view']} p={p:.2f}")
            row["heatmap"] = rel.as_posix()
        rows.append(row)
    return rows
