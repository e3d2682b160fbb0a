"""``biocnn mammo <verb>``."""

from biocnn.cli_common import add_group


def register(subparsers) -> None:
    add_group(subparsers, "mammo", "mammogram classification: synth, train, evaluate, score")
