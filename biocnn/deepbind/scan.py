"""Genome scans: score every window of a FASTA of any size, streamed with constant memory.

The path through the modules:

* :mod:`biocnn.io.fasta_stream` reads the FASTA in blocks of a few MB as pieces of bases;
* :mod:`biocnn.deepbind.scan_batches` cuts each record into batches of ``chunk`` bp of
  overlapping windows (the jobs);
* :mod:`biocnn.deepbind.scan_pipeline` runs the jobs on worker threads (one per core with the
  C kernels), each reading, scoring and writing in file order, so a few batches at most are in
  memory whatever the chromosome or genome length;
* :mod:`biocnn.deepbind.scan_scorer` scores a batch's windows with one detector pass (the C
  kernels of :mod:`biocnn.deepbind.native`, fed by :mod:`biocnn.deepbind.scan_weights`, or torch);
* :mod:`biocnn.deepbind.tracks` writes the outputs.

Outputs: ``PREFIX.bedgraph`` (one score per window, on its central ``stride`` bp so the
intervals do not overlap), ``PREFIX.bed`` (peaks: runs of windows whose score exceeds the
threshold, merged, with the best score) and ``PREFIX.json`` (counts, bp/s, the backend used:
``kernel_isa`` names the C kernels' build, ``fast_path_missing`` why they were not used).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from biocnn.deepbind.model import DeepBind
from biocnn.deepbind.scan_batches import scan_jobs
from biocnn.deepbind.scan_pipeline import ScanPipeline
from biocnn.deepbind.scan_scorer import WindowScorer
from biocnn.deepbind.tracks import TrackWriter
from biocnn.io.atomic import atomic_open, write_json

log = logging.getLogger(__name__)

__all__ = ["WindowScorer", "run_scan", "scan_fasta"]


def scan_fasta(
    model: DeepBind,
    fasta: str | Path,
    out_prefix: str | Path,
    window: int = 101,
    stride: int = 50,
    threshold: float = 0.0,
    chunk: int = 1_000_000,
    progress_every: float = 10.0,
    backend: str = "auto",
) -> dict:
    """Scan every record of ``fasta``; returns counts and speed (also written to PREFIX.json)."""
    scorer = WindowScorer(model, window, stride, backend)
    per_chunk = max(1, chunk // stride)  # windows scored per batch
    out_prefix = str(out_prefix)
    stats = {"bp": 0, "windows": 0, "records": 0, "short_records": []}
    start = time.perf_counter()
    with atomic_open(out_prefix + ".bedgraph", "wb") as bg, atomic_open(out_prefix + ".bed") as bed:
        writer = TrackWriter(bg, bed, window, stride, threshold, scorer.kernels)
        jobs = scan_jobs(fasta, (per_chunk - 1) * stride + window, per_chunk * stride, window, model.motif_len, stats)
        ScanPipeline(scorer, writer, jobs, stats, fasta, progress_every).run()
    seconds = time.perf_counter() - start
    stats.update(
        {
            "peaks": writer.n_peaks,
            # windows with no A/C/G/T (N runs): scanned, but in neither output file
            "uninformative_windows": writer.uninformative,
            "seconds": seconds,
            "bp_per_s": stats["bp"] / max(seconds, 1e-9),
            "window": window,
            "stride": stride,
            "threshold": threshold,
            "backend": scorer.backend,
        }
    )
    if scorer.backend == "native":
        stats["kernel_isa"] = scorer.kernels.isa
    if scorer.fallback_reason:
        stats["fast_path_missing"] = scorer.fallback_reason
    if stats["short_records"]:
        log.warning(
            "%s: %d records shorter than motif_len were not scored: %s",
            fasta,
            len(stats["short_records"]),
            ", ".join(stats["short_records"][:5]),
        )
    write_json(out_prefix + ".json", stats)
    return stats


def run_scan(
    model_dir: str | Path | list[str | Path],
    fasta: str | Path,
    out_prefix: str | Path,
    window: int = 101,
    stride: int = 50,
    threshold: float = 0.0,
    chunk: int = 1_000_000,
) -> dict:
    """The ``scan`` verb: load the model (on CUDA when available) and scan. Several models (a
    list, or a folder of model directories) scan in one pass, ``out_prefix`` then being a folder
    (:func:`biocnn.deepbind.scan_zoo.scan_fasta_models`)."""
    from biocnn.checkpoint import CONFIG, load_model
    from biocnn.device import select_device
    from biocnn.io.paths import ensure_writable_dir

    paths = [model_dir] if isinstance(model_dir, (str, Path)) else list(model_dir)
    many = len(paths) > 1 or not (Path(paths[0]) / CONFIG).is_file()
    ensure_writable_dir(Path(out_prefix) if many else Path(out_prefix).parent)  # before any long work
    if many:
        from biocnn.deepbind.scan_zoo import load_models, scan_fasta_models

        models = load_models(paths, select_device("auto"))
        return scan_fasta_models(models, fasta, out_prefix, window, stride, threshold, chunk)
    model, _ = load_model(paths[0], select_device("auto"), expect="deepbind")
    return scan_fasta(model, fasta, out_prefix, window, stride, threshold, chunk)
