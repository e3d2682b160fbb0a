"""``biocnn deepbind predict``: score sequences with one or many models, in the original tool's table.

Input: one sequence per line (what the original ``deepbind`` tool reads), FASTA, or a DeepBind
table (``seq`` column); DNA or RNA (U read as T). Output: a TSV whose header row names the
models (the DeepBind ID of an imported model, the directory name otherwise) and whose rows
hold each sequence's scores in input order, printed ``%f`` like the original tool.

Each model scores with its own rule (``config.json`` ``scoring``: the original windowed rule
for imported models, the whole sequence for biocnn's own), unless the caller sets one for all.
"""

from __future__ import annotations

import csv
import logging
import time
from pathlib import Path
from typing import Any

from biocnn.checkpoint import CONFIG, load_model
from biocnn.deepbind.original import Scoring, encode, score_models
from biocnn.errors import ConfigError, InputError
from biocnn.io.atomic import atomic_open
from biocnn.io.sequences import iter_fasta, open_text

log = logging.getLogger(__name__)


def read_sequences(path: str | Path) -> list[tuple[str, str]]:
    """``(id, sequence)`` pairs of a one-per-line, FASTA or DeepBind-table file, in file order.

    One-per-line files: every non-blank line is a sequence (IDs are ``line<N>``). Empty
    sequences are an error, since every input gets one output row.
    """
    path = Path(path)
    with open_text(path) as fh:
        first = next((line for line in fh if line.strip()), None)
    if first is None:
        raise InputError(path, "file is empty")
    if first.startswith(">"):
        records = list(iter_fasta(path))
    elif "\t" in first and "seq" in first.rstrip("\r\n").split("\t"):
        records = _table(path)
    else:
        with open_text(path) as fh:
            records = [(f"line{n}", line.strip()) for n, line in enumerate(fh, 1) if line.strip()]
    for rid, seq in records:
        if not seq:
            raise InputError(path, f"record {rid!r} is empty")
    return records


def _table(path: Path) -> list[tuple[str, str]]:
    """The ``seq`` column of a DeepBind table (IDs from ``EventID`` when present)."""
    with open_text(path) as fh:
        reader = csv.reader(fh, delimiter="\t")
        header = next(reader)
        i_seq = header.index("seq")
        i_id = header.index("EventID") if "EventID" in header else None
        records = []
        for lineno, row in enumerate(reader, 2):
            if not row:
                continue
            if len(row) != len(header):
                raise InputError(path, f"line {lineno}: {len(row)} columns, header has {len(header)}")
            records.append((row[i_id] if i_id is not None else f"line{lineno}", row[i_seq]))
    return records


def model_dirs(paths: list[str | Path]) -> list[Path]:
    """Model directories named by ``paths``: a model directory itself, or a folder of them (sorted)."""
    found: list[Path] = []
    for p in map(Path, paths):
        if (p / CONFIG).is_file():
            found.append(p)
        elif p.is_dir():
            inside = sorted(d for d in p.iterdir() if (d / CONFIG).is_file())
            if not inside:
                raise InputError(p, f"neither a model directory nor a folder of model directories (no {CONFIG})")
            found.extend(inside)
        else:
            raise InputError(p, "model directory not found")
    return found


def model_name(directory: Path, config: dict[str, Any]) -> str:
    """A model's column name: its DeepBind ID when imported, else its directory name."""
    return str((config.get("deepbind") or {}).get("id") or directory.name)


def scoring_for(config: dict[str, Any], rule: str | None, window_size: int | None, average: bool | None) -> Scoring:
    """The model's own scoring rule with the caller's settings applied; a window size or
    ``average`` implies the original rule when ``rule`` is not given."""
    own = Scoring.from_config(config)
    if rule == "whole" and (window_size is not None or average):
        raise ConfigError("--window-size and --average belong to the original rule, not --rule whole")
    if rule is None and (window_size is not None or average):
        rule = "original"
    if rule is None:
        return own
    if rule == "whole":
        return Scoring(rule="whole")
    keep_own = own.rule == "original"
    return Scoring(
        rule="original",
        window_size=window_size if window_size is not None else (own.window_size if keep_own else None),
        average=bool(average) if average is not None else (own.average and keep_own),
    )


def run_predict(
    models: list[str | Path],
    sequences: str | Path,
    out: str | Path,
    rule: str | None = None,
    window_size: int | None = None,
    average: bool | None = None,
) -> dict[str, Any]:
    """Score every sequence of ``sequences`` with every model; write the table to ``out``."""
    start = time.perf_counter()
    records = read_sequences(sequences)
    codes = [encode(seq, rid, str(sequences)) for rid, seq in records]
    dirs = model_dirs(models)
    loaded, names, scorings = [], [], []
    for d in dirs:
        model, config = load_model(d, "cpu")
        if config["model"].get("name") != "deepbind":
            raise InputError(d, f"not a DeepBind model (model {config['model'].get('name')!r})")
        loaded.append(model)
        names.append(model_name(d, config))
        scorings.append(scoring_for(config, rule, window_size, average))
    scores = score_models(loaded, codes, scorings)
    with atomic_open(out, "w", encoding="utf-8", newline="") as fh:
        fh.write("\t".join(names) + "\n")
        for row in scores:
            fh.write("\t".join(f"{v:f}" for v in row) + "\n")
    return {"sequences": len(records), "models": len(dirs), "seconds": time.perf_counter() - start}
