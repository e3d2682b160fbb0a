"""``biocnn``: the command line that Snakemake rules and users call.

``biocnn <task> <verb> [options]``; ``biocnn --help`` lists the tasks and their verbs. A
mistake in the user's input (missing file, bad config, corrupt image) ends with a one-line
message on stderr and exit code 1, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import sys

from biocnn import __version__
from biocnn.cli_common import add_group, add_verb
from biocnn.errors import BiocnnError

# Each task package exposes ``register(subparsers)``.
TASK_MODULES = ("biocnn.mammo.cli", "biocnn.segment.cli", "biocnn.deepbind.cli")


def _info(args: argparse.Namespace) -> int:
    """Print versions and the device biocnn would use (also written to --out as JSON)."""
    import torch

    from biocnn.checkpoint import package_versions
    from biocnn.device import select_device
    from biocnn.io.atomic import write_json

    info = {
        "versions": package_versions(),
        "device": str(select_device("auto")),
        "cuda_available": torch.cuda.is_available(),
        "cuda_devices": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
        "torch_threads": torch.get_num_threads(),
    }
    if args.out:
        write_json(args.out, info)
    print(json.dumps(info, indent=2))
    return 0


def _report_build(args: argparse.Namespace) -> int:
    from biocnn.report import build_report

    out = build_report(args.results, args.out, args.tasks or None, args.title)
    print(f"report written to {out}")
    return 0


def _report_check(args: argparse.Namespace) -> int:
    from biocnn.io.atomic import write_json
    from biocnn.report import check_in_browser

    result = check_in_browser(args.report, args.screenshot)
    if args.out:
        write_json(args.out, result)
    print(json.dumps(result))
    if result["broken_images"] or not result["images"]:
        print(
            f"biocnn: error: {args.report}: {result['broken_images']} of {result['images']} images did not load",
            file=sys.stderr,
        )
        return 1
    return 0


def _register_report(sub: argparse._SubParsersAction) -> None:
    verbs = add_group(sub, "report", "the self-contained HTML report of a results directory")
    build = add_verb(verbs, "build", _report_build, "gather metrics, figures and provenance into one HTML file")
    build.add_argument("--results", required=True, help="results directory (e.g. results/demo)")
    build.add_argument("--out", required=True, help="HTML file to write")
    build.add_argument("--tasks", nargs="*", help="tasks to include (default: every task directory present)")
    build.add_argument("--title", default="biocnn demo report")
    check = add_verb(
        verbs,
        "check",
        _report_check,
        "render a report in headless Chromium, save a screenshot, fail if an image did not load",
    )
    check.add_argument("--report", required=True, help="HTML report")
    check.add_argument("--screenshot", required=True, help="PNG screenshot to write")
    check.add_argument("--out", help="JSON file for the image counts")


def _verb_summary(parser: argparse.ArgumentParser) -> str:
    """'task: verb, verb' lines for the top-level help."""
    lines = []
    for action in parser._subparsers._group_actions:  # argparse keeps sub-commands here
        for name, sub in action.choices.items():
            if sub._subparsers is not None:  # a task group, not a plain command such as 'info'
                verbs = sub._subparsers._group_actions[0].choices
                lines.append(f"  {name:<10} {', '.join(verbs) if verbs else '(none yet)'}")
    return "tasks and their verbs:\n" + "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser, with every task group registered."""
    parser = argparse.ArgumentParser(
        prog="biocnn",
        description="Convolutional networks for mammography, segmentation with uncertainty and "
        "DeepBind-style binding models. Run 'biocnn <task> <verb> --help' for details.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"biocnn {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="task", metavar="<task>", required=True)
    for module in TASK_MODULES:
        importlib.import_module(module).register(sub)
    _register_report(sub)
    info = add_verb(sub, "info", _info, "versions and the device that would be used")
    info.add_argument("--out", help="also write the information as JSON to this file")
    parser.epilog = _verb_summary(parser)
    return parser


def _os_error_line(exc: OSError) -> str:
    """``file: reason`` for an operating-system error (both files for a failed rename)."""
    reason = exc.strerror or str(exc)
    if exc.filename is None:
        return reason
    if exc.filename2 is not None:
        return f"{exc.filename} -> {exc.filename2}: {reason}"
    return f"{exc.filename}: {reason}"


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``biocnn`` console script."""
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        logging.basicConfig(
            level=logging.DEBUG if args.verbose else logging.INFO,
            stream=sys.stderr,
            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        )
        # matplotlib logs every font it considers at DEBUG: -v is for biocnn's own messages.
        for noisy in ("matplotlib", "PIL"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
        return int(args.handler(args) or 0)
    except BiocnnError as exc:
        print(f"biocnn: error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        # A missing input, a read-only or full output (ENOSPC, EROFS, EACCES): one line naming the file.
        print(f"biocnn: error: {_os_error_line(exc)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("biocnn: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
