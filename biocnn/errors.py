"""User-facing errors.

Anything raised as a :class:`BiocnnError` is a mistake in the user's input (a missing file, a
bad config, a corrupt image). The command line prints its message on one line to stderr and
exits non-zero without a traceback; programming errors keep their tracebacks.
"""

from __future__ import annotations

from pathlib import Path


class BiocnnError(Exception):
    """Base class for errors caused by user input rather than by a bug."""


class ConfigError(BiocnnError):
    """A configuration file is missing, malformed, or fails validation."""


class CheckpointError(BiocnnError):
    """A model directory is missing files or its weights disagree with its config."""


class InputError(BiocnnError):
    """An input file cannot be used; the message names the file and the problem."""

    def __init__(self, path: str | Path, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{path}: {problem}")
