"""Building blocks for the ``biocnn <task> <verb>`` command line.

Task packages register their verbs with :func:`add_group` and :func:`add_verb`; handlers do
their heavy imports inside the function so ``biocnn --help`` stays fast.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

from biocnn.errors import InputError

Handler = Callable[[argparse.Namespace], int | None]


def add_group(subparsers: argparse._SubParsersAction, name: str, help: str) -> argparse._SubParsersAction:
    """Add a task group (``mammo``, ``segment``, ``deepbind``) and return its verb table."""
    group = subparsers.add_parser(name, help=help, description=help)
    return group.add_subparsers(dest="verb", metavar="<verb>", required=True)


def add_verb(verbs: argparse._SubParsersAction, name: str, handler: Handler, help: str) -> argparse.ArgumentParser:
    """Add one verb with its handler; returns the parser so the caller adds its flags."""
    parser = verbs.add_parser(name, help=help, description=help)
    parser.set_defaults(handler=handler)
    return parser


def existing_file(value: str) -> Path:
    """argparse type: a path that must be an existing file."""
    path = Path(value)
    if not path.is_file():
        raise InputError(path, "file not found")
    return path


def existing_path(value: str) -> Path:
    """argparse type: a path that must exist (file or directory)."""
    path = Path(value)
    if not path.exists():
        raise InputError(path, "no such file or directory")
    return path


def positive_int(value: str) -> int:
    """argparse type: an integer of at least 1 (batch sizes, counts)."""
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number, got {value!r}") from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {number}")
    return number


def non_negative_int(value: str) -> int:
    """argparse type: an integer of at least 0 (worker processes: 0 = decode in the main process)."""
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number, got {value!r}") from None
    if number < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {number}")
    return number


def positive_float(value: str) -> float:
    """argparse type: a number above 0 (seconds)."""
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, got {value!r}") from None
    if not number > 0:
        raise argparse.ArgumentTypeError(f"must be above 0, got {value}")
    return number


def add_budget_options(parser: argparse.ArgumentParser) -> None:
    """``--max-seconds`` and ``--max-steps`` on a ``train`` verb (``train.max_seconds`` / ``max_steps``)."""
    parser.add_argument(
        "--max-seconds",
        type=positive_float,
        help="override train.max_seconds: stop before the step that would take the training loop past "
        "this wall clock (the best weights so far are the model)",
    )
    parser.add_argument(
        "--max-steps",
        type=positive_int,
        help="override train.max_steps: stop after this many optimizer steps (the reproducible budget)",
    )


def budget_overrides(args: argparse.Namespace) -> dict[str, float | int | None]:
    """The config overrides of :func:`add_budget_options` (``None``: keep the config's value)."""
    return {
        "train.max_seconds": getattr(args, "max_seconds", None),
        "train.max_steps": getattr(args, "max_steps", None),
    }
