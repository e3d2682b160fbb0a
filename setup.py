"""Builds the scan kernels (C, through cffi) at install time; everything else is in pyproject.toml."""

import sys
from pathlib import Path

from setuptools import setup

sys.path.insert(0, str(Path(__file__).resolve().parent / "biocnn" / "deepbind" / "kernels"))
from ffibuild import isas_for  # noqa: E402

setup(cffi_modules=[f"biocnn/deepbind/kernels/ffibuild.py:{isa}" for isa in isas_for()])
