"""The genome scan's C kernels: ``scan.c`` (source), ``scan.h`` (interface), ``ffibuild.py`` (their
cffi build, one extension module ``_scan_<isa>`` per instruction set). Load them through
:mod:`biocnn.deepbind.native`."""
