"""``biocnn deepbind <verb>``."""

from biocnn.cli_common import add_group


def register(subparsers) -> None:
    add_group(subparsers, "deepbind", "DeepBind-style binding models: calibrate, train, evaluate, motifs, "
                                      "mutation-map, variants, scan")
