"""The scan's thread pipeline: worker threads read, score and write the jobs of
:func:`biocnn.deepbind.scan_batches.scan_jobs` in file order with bounded memory."""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from biocnn.deepbind.scan_scorer import WindowScorer
from biocnn.deepbind.tracks import TrackWriter

if TYPE_CHECKING:
    from biocnn.deepbind.scan_zoo import ZooScorer, ZooWriter

log = logging.getLogger(__name__)


class ScanPipeline:
    """Runs the scan's jobs on a few worker threads, with no separate reader or writer thread:
    each worker reads the next job (in turn), scores it, and the worker that finds the oldest
    unwritten job done writes it and every done job after it, in file order.

    Why no reader and writer threads: they would share a core with a scoring thread and slow
    it down; with the workers reading and writing for themselves each core runs one thread and
    the work is shared evenly. At most :attr:`limit` (``2 x workers``) jobs are read and not yet
    written, so memory stays bounded whatever the genome. Scoring runs ``parallel_batches`` jobs
    at once (one per thread with the C kernels); with other backends one job is scored while
    another worker reads or writes. A failure stops the reading; the first failure in file order
    is raised once the workers have stopped."""

    def __init__(
        self,
        scorer: WindowScorer | ZooScorer,
        writer: TrackWriter | ZooWriter,
        jobs,
        stats: dict,
        source: str | Path,
        progress_every: float,
    ):
        self.scorer, self.writer, self.jobs, self.stats, self.source = scorer, writer, jobs, stats, source
        self.progress_every, self.started = progress_every, time.perf_counter()
        self.last_report = self.started
        self.workers = max(2, scorer.parallel_batches)
        self.limit = 2 * self.workers
        self.scoring = threading.Semaphore(scorer.parallel_batches)
        self.reading = threading.Lock()  # one reader of ``jobs`` at a time
        self.lock = threading.Lock()  # guards the fields below
        self.changed = threading.Condition(self.lock)
        self.next_read = self.next_write = 0  # job numbers, in file order
        self.done: dict = {}  # number -> (job, scores) scored but waiting for earlier jobs to be written
        self.writing = False  # a worker is writing done jobs
        self.stop = False  # no more jobs (all read, or a failure)
        self.failures: list = []  # (job number, exception)

    def run(self) -> None:
        helpers = [threading.Thread(target=self._work, name=f"scan-{i}", daemon=True) for i in range(1, self.workers)]
        for thread in helpers:
            thread.start()
        try:
            self._work()
        finally:
            with self.lock:  # the main thread may leave early (an interrupt): stop the helpers too
                self.stop = True
                self.changed.notify_all()
            for thread in helpers:
                thread.join()
        if self.failures:
            raise min(self.failures, key=lambda f: f[0])[1]
        assert self.next_write == self.next_read and not self.done, "scan jobs left unwritten"

    def _work(self) -> None:
        while True:
            with self.reading:
                with self.changed:  # bounded memory: wait while the writing lags (holding the
                    # reading lock, so no other worker reads past the limit meanwhile)
                    while self.next_read - self.next_write >= self.limit and not self.stop:
                        self.changed.wait()
                    if self.stop:
                        return
                number = self.next_read
                try:
                    job = next(self.jobs, None)
                except Exception as exc:  # a read error (I/O, gzip): fails at its place in the file
                    self._fail(number, exc)
                    return
                with self.lock:
                    if job is None:
                        self.stop = True
                        self.changed.notify_all()
                        return
                    self.next_read += 1
            try:
                with self.scoring:
                    scores = self._score(*job)
            except Exception as exc:
                self._fail(number, exc)
                return
            with self.lock:
                self.done[number] = job, scores
                if self.writing:  # the writing worker will find it
                    continue
                self.writing = True
            self._write_done()

    def _fail(self, number: int, exc: Exception) -> None:
        with self.lock:
            self.failures.append((number, exc))
            self.stop = True
            self.changed.notify_all()

    def _write_done(self) -> None:
        """Write done jobs in order while the next one is done (only one worker writes at a time)."""
        while True:
            with self.lock:
                item = None if self.failures else self.done.pop(self.next_write, None)
                if item is None:
                    self.writing = False
                    return
            try:
                self._write(*item)
            except Exception as exc:
                self._fail(self.next_write, exc)
                with self.lock:
                    self.writing = False
                return
            with self.lock:
                self.next_write += 1
                self.changed.notify_all()

    def _score(self, bases: bytes | None, name: str, offset: int, end: bool) -> np.ndarray | None:
        if not end:
            split = self.scorer.parallel_batches == 1  # one batch at a time: its windows use all threads
            return self.scorer.score_bases(bases, name, self.source, offset, split)
        if bases is None:
            return None
        return self.scorer.score_whole(bases, name, self.source, offset)

    def _write(self, job: tuple, scores: np.ndarray | None) -> None:
        bases, name, offset, end = job
        if not end:
            n = scores.shape[-1]  # (windows,) for one model, (models, windows) for many
            starts = offset + np.arange(n, dtype=np.int64) * self.scorer.stride
            self.writer.windows(name, starts, scores)
            self.stats["windows"] += n
            now = time.perf_counter()
            if now - self.last_report > self.progress_every:
                log.info("scanned %d bp, %.2f Mbp/s", self.stats["bp"], self.stats["bp"] / (now - self.started) / 1e6)
                self.last_report = now
            return
        if scores is not None:  # the record's short rest, scored whole
            self.writer.windows(name, np.array([offset]), scores, np.array([offset + len(bases)]))
            self.stats["windows"] += 1
        self.writer.flush()  # close the record's last peak
