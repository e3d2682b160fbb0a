"""Genome scans with many models at once (e.g. the 927 published DeepBind models): one pass over
the FASTA, one bedGraph and one peak BED per model.

The FASTA is read and cut into batches once (:mod:`biocnn.deepbind.scan_batches`, the same
jobs as the one-model scan); each batch is then scored by every model's
:class:`~biocnn.deepbind.scan_scorer.WindowScorer`, the models shared out over the threads, and
every model's windows go to its own :class:`~biocnn.deepbind.tracks.TrackWriter`. A model's
outputs are therefore the bytes a one-model scan writes. Memory: the models' weight tables (a
few MB each, kept for the whole scan) plus a few batches of ``models x windows`` scores, whose
size is capped (:data:`SCORES_PER_BATCH`), so it stays flat in the genome's length.

Outputs in the folder ``OUT``: ``OUT/<model>.bedgraph``, ``OUT/<model>.bed`` (``<model>``: the
DeepBind ID of an imported model, else the model directory's name) and ``OUT/scan.json``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from biocnn.deepbind.model import DeepBind
from biocnn.deepbind.scan_batches import scan_jobs, uninformative_windows
from biocnn.deepbind.scan_pipeline import ScanPipeline
from biocnn.deepbind.scan_scorer import WindowScorer
from biocnn.deepbind.tracks import TextBuffer, TrackWriter
from biocnn.errors import InputError
from biocnn.io.atomic import temporary_dir, write_json
from biocnn.io.fasta_stream import chunk_codes

log = logging.getLogger(__name__)

SCORES_PER_BATCH = 1 << 23  # models x windows scored per batch (32 MB of float32; a few batches are in flight)
SUMMARY = "scan.json"


class ZooScorer:
    """Scores a batch's windows with every model (each with its own scorer, into one code buffer
    per thread); the models are shared out over :attr:`threads` threads, so a single batch keeps
    every core busy. Scores are ``(models, windows)``."""

    def __init__(self, models: list[DeepBind], window: int, stride: int, backend: str = "auto"):
        self.window, self.stride = window, stride
        threads = max(1, torch.get_num_threads())
        with ThreadPoolExecutor(threads) as pool:  # packing the tables is a few ms per model
            self.scorers = list(pool.map(lambda m: WindowScorer(m, window, stride, backend), models))
        self.motif_lens = np.array([s.k for s in self.scorers])
        self.kernels = self.scorers[0].kernels
        self.native = all(s.backend == "native" for s in self.scorers)
        self.backend = "native" if self.native else "torch"
        self.fallback_reason = next((s.fallback_reason for s in self.scorers if s.fallback_reason), "")
        self.threads = threads if self.native else 1
        self.pool = ThreadPoolExecutor(self.threads) if self.threads > 1 else None
        self.lead = max(s.margins[0] for s in self.scorers)
        self.tail = max(s.margins[1] for s in self.scorers)
        self._local = threading.local()

    @property
    def parallel_batches(self) -> int:
        """One batch at a time: its models run on all the threads."""
        return 1

    def score_bases(
        self, raw: bytes, record: str, source: str | Path, offset: int = 0, split: bool = True
    ) -> np.ndarray:
        """``(models, windows)`` scores of the windows of a chunk of ASCII bases, each row what the
        model's own :meth:`~biocnn.deepbind.scan_scorer.WindowScorer.score_bases` gives (masked
        windows included). The chunk is encoded and checked for windows without A/C/G/T once,
        and every model reads the same codes."""
        n = len(raw)
        if not self.native:
            return _stack([scorer.score_bases(raw, record, source, offset) for scorer in self.scorers])
        n_windows = (n - self.window) // self.stride + 1
        if n_windows < 1:
            return np.zeros((len(self.scorers), 0), np.float32)
        buf = getattr(self._local, "buffer", None)
        if buf is None or len(buf) < self.lead + n + self.tail:
            buf = self._local.buffer = np.zeros(self.lead + n + self.tail, np.uint8)
        codes = chunk_codes(raw, record, source, offset, self.kernels, out=buf[self.lead : self.lead + n])
        scores = np.empty((len(self.scorers), n_windows), np.float32)

        def run(i: int) -> None:  # the kernels read the codes from ``lead`` on, with their margins
            scores[i] = self.scorers[i].score_codes(buf, self.lead, n_windows, split=False)

        if self.pool is None:
            for i in range(len(self.scorers)):
                run(i)
        else:  # the kernels run without the GIL; one task per model balances different motif lengths
            list(self.pool.map(run, range(len(self.scorers))))
        masked = uninformative_windows(codes, n_windows, self.window, self.stride)
        if not masked.size:
            return scores
        mask = np.zeros(scores.shape, bool)
        mask[:, masked] = True
        return np.ma.masked_array(scores, mask)

    def score_whole(self, raw: bytes, record: str, source: str | Path, offset: int = 0) -> np.ndarray:
        """``(models, 1)`` scores of a piece shorter than a window, scored whole; NaN for the models
        whose motif is longer than the piece (a one-model scan does not score it either)."""
        nan = np.full(1, np.nan, np.float32)
        return _stack(
            [
                scorer.score_whole(raw, record, source, offset) if len(raw) >= scorer.k else nan
                for scorer in self.scorers
            ]
        )


def _stack(rows: list) -> np.ndarray:
    """Rows of scores as one ``(models, windows)`` array, masked where any row is."""
    if any(np.ma.isMaskedArray(row) for row in rows):
        return np.ma.stack([np.ma.asarray(row) for row in rows])
    return np.stack(rows) if rows else np.zeros((0, 0), np.float32)


class ZooWriter:
    """One :class:`~biocnn.deepbind.tracks.TrackWriter` per model, fed row ``i`` of the scores."""

    def __init__(self, writers: list[TrackWriter]):
        self.writers = writers

    def windows(self, chrom: str, starts: np.ndarray, scores: np.ndarray, ends: np.ndarray | None = None) -> None:
        for writer, row in zip(self.writers, scores):
            if ends is None or not np.isnan(np.ma.getdata(row)).all():
                writer.windows(chrom, starts, row, ends)

    def flush(self) -> None:
        for writer in self.writers:
            writer.flush()

    @property
    def n_peaks(self) -> list[int]:
        return [w.n_peaks for w in self.writers]


def scan_fasta_models(
    models: dict[str, DeepBind],
    fasta: str | Path,
    out_dir: str | Path,
    window: int = 101,
    stride: int = 50,
    threshold: float = 0.0,
    chunk: int = 1_000_000,
    progress_every: float = 10.0,
    backend: str = "auto",
) -> dict:
    """Scan every record of ``fasta`` with every model of ``models`` (name -> model) in one pass;
    writes ``OUT/<name>.bedgraph`` and ``.bed`` per model and ``OUT/scan.json``; returns the summary."""
    if not models:
        raise InputError("--model", "no models to scan with")
    names = list(models)
    for name in names:
        if not name or "/" in name or "\\" in name or name.startswith("."):
            raise InputError("--model", f"model name {name!r} cannot name an output file")
    setup, setup_cpu = time.perf_counter(), time.process_time()
    scorer = ZooScorer(list(models.values()), window, stride, backend)
    setup, setup_cpu = time.perf_counter() - setup, time.process_time() - setup_cpu
    per_chunk = max(1, min(chunk // stride, SCORES_PER_BATCH // len(names)))  # windows per batch
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stats = {"bp": 0, "windows": 0, "records": 0, "short_records": []}
    start = time.perf_counter()
    # Every file is written in a hidden folder, made durable (fsync, in parallel: one after the other
    # they take ms each) and moved into place once the scan has succeeded; on failure none is.
    tmp = temporary_dir(out_dir, "scan")
    try:
        with contextlib.ExitStack() as files:
            writers, handles = [], []
            text = TextBuffer()  # the models' bedGraph lines are formatted one model at a time
            for name in names:
                bg = files.enter_context(open(tmp / f"{name}.bedgraph", "wb"))
                bed = files.enter_context(open(tmp / f"{name}.bed", "w"))
                writers.append(TrackWriter(bg, bed, window, stride, threshold, scorer.kernels, text))
                handles += [bg, bed]
            writer = ZooWriter(writers)
            take, step = (per_chunk - 1) * stride + window, per_chunk * stride
            jobs = scan_jobs(fasta, take, step, window, int(scorer.motif_lens.min()), stats)
            ScanPipeline(scorer, writer, jobs, stats, fasta, progress_every).run()
            with ThreadPoolExecutor(16) as pool:
                list(pool.map(_sync, handles))
        for name in names:
            for ext in ("bedgraph", "bed"):
                os.replace(tmp / f"{name}.{ext}", out_dir / f"{name}.{ext}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    seconds = time.perf_counter() - start
    stats.update(
        {
            "models": names,
            "peaks": dict(zip(names, writer.n_peaks)),
            "seconds": seconds,
            "bp_per_s": stats["bp"] / max(seconds, 1e-9),
            "model_mbp_per_s": len(names) * stats["bp"] / 1e6 / max(seconds, 1e-9),
            # packing every model's tables for the kernels, before the scan (not in ``seconds``)
            "setup_seconds": setup,
            "setup_cpu_seconds": setup_cpu,
            "window": window,
            "stride": stride,
            "threshold": threshold,
            "backend": scorer.backend,
        }
    )
    if scorer.native:
        stats["kernel_isa"] = scorer.kernels.isa
    if scorer.fallback_reason:
        stats["fast_path_missing"] = scorer.fallback_reason
    if stats["short_records"]:
        log.warning(
            "%s: %d records shorter than every motif were not scored: %s",
            fasta,
            len(stats["short_records"]),
            ", ".join(stats["short_records"][:5]),
        )
    write_json(out_dir / SUMMARY, stats)
    return stats


def _sync(fh) -> None:
    fh.flush()
    os.fsync(fh.fileno())


def load_models(paths: list[str | Path], device: str | torch.device = "cpu") -> dict[str, DeepBind]:
    """DeepBind models from model directories or folders of them (see
    :func:`biocnn.deepbind.predict.model_dirs`), by name (the DeepBind ID of an imported model);
    two models of one name are an error."""
    from biocnn.checkpoint import load_model
    from biocnn.deepbind.predict import model_dirs, model_name

    models: dict[str, DeepBind] = {}
    for d in model_dirs(paths):
        model, config = load_model(d, device)
        if config["model"].get("name") != "deepbind":
            raise InputError(d, f"not a DeepBind model (model {config['model'].get('name')!r})")
        name = model_name(d, config)
        if name in models:
            raise InputError(d, f"a second model named {name!r}")
        models[name] = model
    return models
