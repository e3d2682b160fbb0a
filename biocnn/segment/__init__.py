"""Segmentation with uncertainty: U-Nets for 2D microscopy and 3D multi-modal NIfTI."""
