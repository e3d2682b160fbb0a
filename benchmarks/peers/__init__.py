"""The peers of ``benchmarks/segment_real.py`` (nnU-Net v2, MONAI BasicUNet, Otsu, biocnn's command
line), the shared reading and evaluation, and the generator of the development shifted set."""
