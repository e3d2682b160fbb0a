"""The genome scan's C kernels (:mod:`biocnn.deepbind.kernels`), built at install time, loaded here.

Why C: the scan's inner loop adds ``motif_len / 4`` table rows of ``channels`` floats per
position and keeps a running max per channel in vector registers, which a JIT compiler would
keep in memory. The kernels are compiled once per instruction set (baseline, AVX2 + FMA,
AVX-512); :func:`load` picks the best build this CPU runs. Without any build (a copy of the
package that was never installed with a compiler) :func:`load` returns ``None`` and
:func:`missing_reason` says why; callers then use torch and say so loudly.

Kernels (single-threaded; cffi releases the GIL during each call, so threads run them in
parallel):

* :meth:`Kernels.encode`: ASCII bases -> codes 0-4 with validation;
* :meth:`Kernels.score`: every window's pooled detector outputs from 4-mer tables
  (:func:`biocnn.deepbind.scan_weights.quad_tables`), then DeepBind's head on each strand;
* :meth:`Kernels.bedgraph`: bedGraph lines (``%.4f`` rounded half-to-even from the exact value,
  as Python's ``format`` does).
"""

from __future__ import annotations

import importlib
import os

import numpy as np

MAX_CHANNELS = 256  # detector channels (both strands) and hidden units: the kernel's register budget
MAX_MOTIF_LEN = 253  # 4-mers per detector the kernel keeps row pointers for

# Builds, best first, with the level of biocnn_cpu_level() each needs.
ISAS = (("avx512", 2), ("avx2", 1), ("baseline", 0))
# Forces one build (e.g. to compare builds); unset: the best this CPU runs.
ISA_ENV = "BIOCNN_SCAN_ISA"

_CACHE: dict[str, Kernels | None] = {}
_MISSING: dict[str, str] = {}


class Kernels:
    """One build of the kernels, with typed entry points over NumPy arrays."""

    def __init__(self, module, isa: str):
        self.ffi, self.lib, self.isa = module.ffi, module.lib, isa
        self.vector_width = self.lib.biocnn_vector_width()

    def _ptr(self, ctype: str, array: np.ndarray, offset: int = 0):
        return self.ffi.cast(ctype, array.ctypes.data) + offset

    def encode(self, ascii: np.ndarray, lut: np.ndarray, out: np.ndarray) -> int:
        """Codes of ``ascii`` (uint8) through ``lut`` into ``out``; the index of the first invalid
        byte, or -1."""
        assert ascii.dtype == lut.dtype == out.dtype == np.uint8 and len(out) >= len(ascii) and len(lut) == 256
        return self.lib.biocnn_encode(
            self._ptr("uint8_t *", ascii), len(ascii), self._ptr("uint8_t *", lut), self._ptr("uint8_t *", out)
        )

    def score(
        self,
        codes: np.ndarray,
        lead: int,
        ztab: np.ndarray,
        bias: np.ndarray,
        pad_left: np.ndarray,
        pad_right: np.ndarray,
        k: int,
        window: int,
        stride: int,
        i0: int,
        i1: int,
        block: int,
        motifs: int,
        strands: int,
        avg: bool,
        w1t: np.ndarray,
        b1: np.ndarray,
        w2: np.ndarray,
        b2: float,
        out: np.ndarray,
    ) -> None:
        """Scores of windows ``[i0, i1)`` into ``out[i0:i1]``; ``codes[lead:]`` are the chunk's base
        codes with the margins the kernel reads (see ``scan.c``). Raises MemoryError when the
        kernel cannot allocate its scratch memory."""
        channels = ztab.shape[-1]
        assert ztab.dtype == np.float32 and out.dtype == np.float32 and len(out) >= i1 and codes.dtype == np.uint8
        f = "float *"
        status = self.lib.biocnn_score(
            self._ptr("uint8_t *", codes, lead),
            self._ptr(f, ztab),
            self._ptr(f, bias),
            self._ptr(f, pad_left),
            self._ptr(f, pad_right),
            channels,
            k,
            window,
            stride,
            i0,
            i1,
            block,
            motifs,
            strands,
            int(avg),
            self._ptr(f, w1t),
            self._ptr(f, b1),
            w1t.shape[1],
            self._ptr(f, w2),
            b2,
            self._ptr(f, out, i0),
        )
        if status != 0:
            raise MemoryError(f"scan kernel: cannot allocate scratch memory for {block} windows of {channels} channels")

    def bedgraph(self, chrom: bytes, lo: np.ndarray, hi: np.ndarray, scores: np.ndarray, out: np.ndarray) -> int:
        """bedGraph lines into ``out`` (at least ``len(lo) * (len(chrom) + 128)`` bytes); returns the
        bytes written."""
        n = len(lo)
        assert lo.dtype == hi.dtype == np.int64 and scores.dtype == np.float32 and len(hi) == len(scores) == n
        assert len(out) >= n * (len(chrom) + 128)
        return self.lib.biocnn_bedgraph(
            chrom,
            len(chrom),
            self._ptr("int64_t *", lo),
            self._ptr("int64_t *", hi),
            self._ptr("float *", scores),
            n,
            self._ptr("char *", out),
        )


def _import(isa: str):
    return importlib.import_module(f"biocnn.deepbind.kernels._scan_{isa}")


def cpu_level() -> int:
    """What this CPU runs: 2 AVX-512, 1 AVX2 + FMA, 0 baseline (-1: no build to ask)."""
    try:
        return _import("baseline").lib.biocnn_cpu_level()
    except ImportError:
        return -1


def available() -> list[str]:
    """The builds installed that this CPU can run, best first."""
    level, out = cpu_level(), []
    for isa, need in ISAS:
        if need <= level:
            try:
                _import(isa)
            except ImportError:
                continue
            out.append(isa)
    return out


def load(isa: str | None = None) -> Kernels | None:
    """The kernels (the best build for this CPU, or ``isa``: a name of :data:`ISAS`), or ``None``
    when that build is missing or this CPU cannot run it (:func:`missing_reason` says why)."""
    isa = isa or os.environ.get(ISA_ENV) or ""
    if isa not in _CACHE:
        _CACHE[isa] = _load(isa)
    return _CACHE[isa]


def missing_reason(isa: str | None = None) -> str:
    """Why :func:`load` returned ``None`` ('' when it did not)."""
    isa = isa or os.environ.get(ISA_ENV) or ""
    return "" if load(isa) is not None else _MISSING[isa]


def _load(isa: str) -> Kernels | None:
    names = [name for name, _ in ISAS]
    if isa and isa not in names:
        _MISSING[isa] = f"unknown kernel build {isa!r} (from {ISA_ENV}?); builds: {', '.join(names)}"
        return None
    runnable = available()
    if not runnable:
        try:
            _import("baseline")
            why = "no build of them loads"
        except ImportError as err:
            why = f"they are not built ({err})"
        _MISSING[isa] = (
            f"the compiled scan kernels are missing: {why}; install biocnn with a C compiler "
            "(pip install -e . or pip install .) to build them"
        )
        return None
    if isa and isa not in runnable:
        _MISSING[isa] = (
            f"the {isa} build of the scan kernels is not installed or this CPU cannot run it "
            f"(runnable: {', '.join(runnable)})"
        )
        return None
    chosen = isa or runnable[0]
    return Kernels(_import(chosen), chosen)
