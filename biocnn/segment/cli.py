"""``biocnn segment <verb>``."""

from biocnn.cli_common import add_group


def register(subparsers) -> None:
    add_group(subparsers, "segment", "segmentation with uncertainty: synth, train, predict, evaluate")
