"""cffi builders of the scan kernels, one extension module per instruction set (used by setup.py).

The same source (``scan.c``) is compiled once per instruction set with that set enabled;
:mod:`biocnn.deepbind.native` picks at import time the best build the CPU can run. The
prototypes are declared once, in ``scan.h``, which both the C source and the cffi cdef read.
"""

from __future__ import annotations

import platform
import sys
from pathlib import Path

from cffi import FFI

HERE = Path(__file__).resolve().parent

# IEEE additions in the order written (no fast-math, no contraction of a * b + c), whatever the
# compiler's defaults; -fno-wrapv undoes Python's -fwrapv, which blocks loop optimisations.
COMMON = ["-O3", "-fno-fast-math", "-ffp-contract=off", "-fno-wrapv", "-Wno-psabi"]
# Instruction set -> extra flags (x86-64 only; elsewhere only the baseline is built).
ISAS = {
    "baseline": [],
    "avx2": ["-mavx2", "-mfma", "-mbmi2", "-mpopcnt"],
    "avx512": ["-mavx2", "-mfma", "-mbmi2", "-mpopcnt", "-mavx512f", "-mavx512bw", "-mavx512dq", "-mavx512vl"],
}


def isas_for(machine: str | None = None) -> list[str]:
    """The instruction sets built on this architecture."""
    machine = (machine or platform.machine()).lower()
    return list(ISAS) if machine in ("x86_64", "amd64") else ["baseline"]


def cdef() -> str:
    """``scan.h`` without its preprocessor lines (cffi's parser takes declarations only)."""
    lines = (HERE / "scan.h").read_text().splitlines()
    return "\n".join(line for line in lines if not line.lstrip().startswith("#"))


def builder(isa: str) -> FFI:
    ffi = FFI()
    ffi.cdef(cdef())
    # The kernel source is the module's own source: each build compiles its own copy of scan.c.
    ffi.set_source(
        f"biocnn.deepbind.kernels._scan_{isa}",
        (HERE / "scan.c").read_text(),
        include_dirs=[str(HERE)],
        extra_compile_args=COMMON + ISAS[isa],
        libraries=[] if sys.platform == "win32" else ["m"],
    )
    return ffi


baseline = builder("baseline")
avx2 = builder("avx2")
avx512 = builder("avx512")
