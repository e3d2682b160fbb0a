"""biocnn: convolutional networks for mammography, segmentation with uncertainty and
DeepBind-style binding models, all on one shared conv backbone."""

__version__ = "0.1.0"
