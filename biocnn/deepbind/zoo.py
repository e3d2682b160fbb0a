"""The published DeepBind models: read the release's index and parameter files, write model directories.

The DeepBind release (Alipanahi et al., Nat. Biotechnol. 33, 831, 2015; tool v0.11) ships 927
trained models as text files (``db/params/DXXXXX.YYY.txt``, format ``# deepbind 0.1``) listed in
``db/db.tsv``. :func:`import_models` turns each into an ordinary biocnn model directory
(``weights.safetensors`` + ``config.json``) on :class:`~biocnn.deepbind.model.DeepBind`, so every
``biocnn deepbind`` verb can use it. The conversion only re-orders weights:

* detectors ``reshape(m, 4, d)[j, b, k]`` -> conv kernels ``(d, 4, m)``; thresholds -> conv bias;
* the release interleaves pooled features ``[max_0, avg_0, max_1, ...]``, the model concatenates
  ``[avg_0 .. avg_{d-1}, max_0 .. max_{d-1}]``: the first dense layer's rows are permuted to match.

An imported model scores with the original tool's windowed rule by default (``config.json``
``scoring``; see :mod:`biocnn.deepbind.original`).
"""

from __future__ import annotations

import ast
import contextlib
import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from biocnn.errors import InputError

INDEX = "db.tsv"
PARAMS = "params"
HEADER = "# deepbind"
CITATION = (
    "Alipanahi B, Delong A, Weirauch MT, Frey BJ. Predicting the sequence specificities of DNA- and "
    "RNA-binding proteins by deep learning. Nat Biotechnol 33, 831-838 (2015). doi:10.1038/nbt.3300"
)
LICENSE = "BSD 3-clause, Copyright (c) 2014 Andrew Delong (DeepBind release LICENSE.TXT)"
INT_FIELDS = ("reverse_complement", "num_detectors", "detector_len", "has_avg_pooling", "num_hidden")
ARRAY_FIELDS = ("detectors", "thresholds", "weights1", "biases1", "weights2", "biases2")
INDEX_COLUMNS = (
    "ID",
    "Protein",
    "Type",
    "Species",
    "Family",
    "Class",
    "Experiment",
    "Experiment Details",
    "Model",
    "Cite",
    "Labels",
    "Path",
    "Comment",
)


@dataclass
class ZooEntry:
    """One row of ``db.tsv``: a model's identity and where its training data came from."""

    id: str
    protein: str
    type: str
    species: str
    family: str
    protein_class: str
    experiment: str
    experiment_details: list[str]
    model: str
    cite: str
    labels: str
    path: str
    comment: str

    @property
    def deprecated(self) -> bool:
        """Rows marked in ``Labels`` (``deprecated``) have no parameter file."""
        return bool(self.labels.strip())

    def info(self) -> dict[str, Any]:
        """The index fields as they go into ``config.json``."""
        return {
            "id": self.id,
            "protein": self.protein,
            "type": self.type,
            "species": self.species,
            "family": self.family,
            "class": self.protein_class,
            "experiment": self.experiment,
            "experiment_details": self.experiment_details,
            "model": self.model,
            "cite": self.cite,
            "comment": self.comment,
        }


@dataclass
class PublishedParams:
    """The parsed fields of one ``# deepbind 0.1`` parameter file (arrays as float32, file order)."""

    reverse_complement: int
    num_detectors: int
    detector_len: int
    has_avg_pooling: int
    num_hidden: int
    version: str = "deepbind 0.1"
    arrays: dict[str, np.ndarray] = field(default_factory=dict)


def _details(text: str) -> list[str]:
    """``['CellLine=GM12878','Lab=X']`` -> list of strings (the column is a Python list literal)."""
    text = text.strip()
    if not text:
        return []
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return [text]
    return [str(v) for v in value] if isinstance(value, (list, tuple)) else [str(value)]


def read_index(db: str | Path) -> dict[str, ZooEntry]:
    """The rows of ``DB/db.tsv`` by DeepBind ID (``#`` comment lines skipped, CRLF accepted)."""
    path = Path(db) / INDEX
    if not path.is_file():
        raise InputError(path, "DeepBind index not found (--db is the folder holding db.tsv and params/)")
    entries: dict[str, ZooEntry] = {}
    header: list[str] | None = None
    with open(path, encoding="utf-8", newline="") as fh:
        for line in fh:
            line = line.rstrip("\r\n")
            if not line.strip() or line.startswith("#"):
                continue
            cells = line.split("\t")
            if header is None:
                header = cells
                missing = [c for c in INDEX_COLUMNS if c not in header]
                if missing:
                    raise InputError(path, f"header lacks column(s) {', '.join(missing)}")
                continue
            cells += [""] * (len(header) - len(cells))
            row = dict(zip(header, cells))
            entries[row["ID"]] = ZooEntry(
                id=row["ID"],
                protein=row["Protein"],
                type=row["Type"],
                species=row["Species"],
                family=row["Family"],
                protein_class=row["Class"],
                experiment=row["Experiment"],
                experiment_details=_details(row["Experiment Details"]),
                model=row["Model"],
                cite=row["Cite"],
                labels=row["Labels"],
                path=row["Path"],
                comment=row["Comment"],
            )
    if header is None:
        raise InputError(path, "no header line")
    return entries


def _int_field(path: Path, key: str, text: str) -> int:
    try:
        return int(text.strip())
    except ValueError:
        raise InputError(path, f"field '{key}': {text.strip()!r} is not an integer") from None


def _float_field(path: Path, key: str, text: str) -> np.ndarray:
    text = text.strip()
    if not text:
        return np.zeros(0, np.float32)
    parts = text.split(",")
    try:
        values = np.array([float(p) for p in parts], dtype=np.float32)
    except ValueError:
        bad = next(i for i, p in enumerate(parts) if not _is_float(p))
        raise InputError(path, f"field '{key}': value {bad + 1} {parts[bad].strip()!r} is not a number") from None
    if not np.isfinite(values).all():
        bad = int(np.flatnonzero(~np.isfinite(values))[0])
        raise InputError(path, f"field '{key}': value {bad + 1} {parts[bad].strip()!r} is not finite")
    return values


def _is_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def parse_params(path: str | Path) -> PublishedParams:
    """Read and check one parameter file; any problem is an :class:`InputError` naming the file and field."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "parameter file not found")
    try:
        text = path.read_text(encoding="ascii")
    except UnicodeDecodeError:
        raise InputError(path, "not an ASCII text parameter file") from None
    lines = [line for line in text.replace("\r\n", "\n").split("\n") if line.strip()]
    if not lines or not lines[0].startswith(HEADER):
        raise InputError(path, f"first line should start with '{HEADER}'")
    fields: dict[str, str] = {}
    for lineno, line in enumerate(lines[1:], 2):
        key, sep, value = line.partition("=")
        key = key.strip()
        if not sep:
            raise InputError(path, f"line {lineno}: expected 'key = values'")
        if key not in INT_FIELDS + ARRAY_FIELDS:
            raise InputError(path, f"field '{key}': unknown field")
        if key in fields:
            raise InputError(path, f"field '{key}': given twice")
        fields[key] = value
    for key in INT_FIELDS + ARRAY_FIELDS:
        if key not in fields:
            raise InputError(path, f"field '{key}': missing")
    ints = {key: _int_field(path, key, fields[key]) for key in INT_FIELDS}
    for key in ("reverse_complement", "has_avg_pooling"):
        if ints[key] not in (0, 1):
            raise InputError(path, f"field '{key}': {ints[key]} is not 0 or 1")
    for key in ("num_detectors", "detector_len"):
        if ints[key] < 1:
            raise InputError(path, f"field '{key}': {ints[key]} is not positive")
    if ints["num_hidden"] < 0:
        raise InputError(path, f"field 'num_hidden': {ints['num_hidden']} is negative")
    d, m, hidden = ints["num_detectors"], ints["detector_len"], ints["num_hidden"]
    features = d * (2 if ints["has_avg_pooling"] else 1)
    sizes = {
        "detectors": (d * m * 4, f"num_detectors * detector_len * 4 = {d} * {m} * 4"),
        "thresholds": (d, "num_detectors"),
        "weights1": (features * max(hidden, 1), f"pooled features * outputs = {features} * {max(hidden, 1)}"),
        "biases1": (max(hidden, 1), "num_hidden or 1"),
        "weights2": (hidden, "num_hidden"),
        "biases2": (1 if hidden else 0, "1 with a hidden layer, else 0"),
    }
    arrays = {}
    for key in ARRAY_FIELDS:
        values = _float_field(path, key, fields[key])
        expected, why = sizes[key]
        if values.size != expected:
            raise InputError(path, f"field '{key}': expected {expected} values ({why}), got {values.size}")
        arrays[key] = values
    return PublishedParams(**ints, version=lines[0].lstrip("# ").strip(), arrays=arrays)


def model_spec(params: PublishedParams) -> dict[str, Any]:
    """The ``config.json`` model entry of a published model (see :class:`~biocnn.deepbind.model.DeepBind`)."""
    return {
        "name": "deepbind",
        "num_motifs": params.num_detectors,
        "motif_len": params.detector_len,
        "pool": "maxavg" if params.has_avg_pooling else "max",
        "hidden": params.num_hidden,
        "dropout": 0.0,
        "init_scale": None,
        "both_strands": bool(params.reverse_complement),
    }


def to_model(params: PublishedParams) -> torch.nn.Module:
    """A :class:`~biocnn.deepbind.model.DeepBind` (eval mode) carrying the published weights."""
    from biocnn.models import build_model

    d, m, hidden = params.num_detectors, params.detector_len, params.num_hidden
    a = params.arrays
    kernels = a["detectors"].reshape(m, 4, d).transpose(2, 1, 0)  # (d, 4, m): detector, base, position
    w1 = a["weights1"].reshape(-1, max(hidden, 1))  # (features, outputs), rows in the file's feature order
    if params.has_avg_pooling:
        # File rows [max_0, avg_0, max_1, avg_1, ...]; the model's features are [avg_0.., max_0..].
        w1 = np.concatenate([w1[1::2], w1[0::2]])
    model = build_model(model_spec(params))
    linears = [layer for layer in model.head.mlp if isinstance(layer, torch.nn.Linear)]
    with torch.no_grad():
        model.motif_conv.weight.copy_(torch.from_numpy(np.ascontiguousarray(kernels)))
        model.motif_conv.bias.copy_(torch.from_numpy(a["thresholds"]))
        linears[0].weight.copy_(torch.from_numpy(np.ascontiguousarray(w1.T)))
        linears[0].bias.copy_(torch.from_numpy(a["biases1"]))
        if hidden:
            linears[1].weight.copy_(torch.from_numpy(a["weights2"].reshape(1, hidden)))
            linears[1].bias.copy_(torch.from_numpy(a["biases2"]))
    return model.eval()


def sha256(path: str | Path) -> str:
    """SHA-256 of a file's bytes."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def model_config(entry: ZooEntry, params: PublishedParams, db: Path, versions: dict[str, str]) -> dict[str, Any]:
    """``config.json`` of an imported model: the model, its default scoring rule and its provenance."""
    from biocnn.deepbind.original import default_scoring

    source = db / PARAMS / f"{entry.id}.txt"
    return {
        "model": model_spec(params),
        "scoring": default_scoring(),
        "deepbind": entry.info(),
        "provenance": {
            "db": str(db.resolve()),
            "source": f"{PARAMS}/{source.name}",
            "source_sha256": sha256(source),
            "format": params.version,
            "citation": CITATION,
            "license": LICENSE,
            "versions": versions,
        },
    }


def write_model_dir(directory: str | Path, model: torch.nn.Module, config: dict[str, Any]) -> Path:
    """Write a model directory whole: built beside the target, then renamed onto it."""
    from biocnn.checkpoint import save_model

    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    try:
        save_model(tmp, model, config)
        old = None
        if directory.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{directory.name}.old.", dir=directory.parent))
            os.replace(directory, old / directory.name)
        os.replace(tmp, directory)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        with contextlib.suppress(FileNotFoundError):
            shutil.rmtree(tmp)
    return directory


@dataclass
class ImportResult:
    """Counts of one import: ``seen == len(written) + len(failures)``."""

    seen: int = 0
    written: list[str] = field(default_factory=list)
    failures: list[tuple[str, str]] = field(default_factory=list)


def select(
    index: dict[str, ZooEntry],
    ids: Iterable[str] | None = None,
    proteins: Iterable[str] | None = None,
    experiments: Iterable[str] | None = None,
) -> tuple[list[str], list[tuple[str, str]]]:
    """IDs to import (every filter given must match; case-insensitive names) and the asked-for IDs
    that cannot be imported, with the reason."""
    ids = list(ids or [])
    wanted_p = {p.lower() for p in proteins or []}
    wanted_e = {e.lower() for e in experiments or []}
    problems = []
    if ids:
        candidates = []
        for i in dict.fromkeys(ids):
            if i not in index:
                problems.append((i, "not in db.tsv"))
            elif index[i].deprecated:
                problems.append((i, f"marked '{index[i].labels}' in db.tsv: the release has no parameter file"))
            else:
                candidates.append(i)
    else:
        candidates = [i for i, e in index.items() if not e.deprecated]
    chosen = [
        i
        for i in candidates
        if (not wanted_p or index[i].protein.lower() in wanted_p)
        and (not wanted_e or index[i].experiment.lower() in wanted_e)
    ]
    return chosen, problems


def import_models(
    db: str | Path,
    out: str | Path,
    ids: Iterable[str] | None = None,
    proteins: Iterable[str] | None = None,
    experiments: Iterable[str] | None = None,
    progress=None,
) -> ImportResult:
    """Convert the selected published models into ``OUT/<DeepBind ID>/`` model directories.

    A model that fails (a malformed or missing parameter file) is listed in the result with
    its reason and the others go on. ``progress(done, total)`` is called after each model.
    """
    from biocnn.checkpoint import package_versions

    db, out = Path(db), Path(out)
    index = read_index(db)
    chosen, problems = select(index, ids, proteins, experiments)
    result = ImportResult(seen=len(chosen) + len(problems), failures=list(problems))
    if not chosen and not problems:
        raise InputError(db / INDEX, "no published model matches the selection")
    versions = package_versions()
    for n, model_id in enumerate(chosen, 1):
        try:
            params = parse_params(db / PARAMS / f"{model_id}.txt")
            write_model_dir(out / model_id, to_model(params), model_config(index[model_id], params, db, versions))
            result.written.append(model_id)
        except InputError as exc:
            result.failures.append((model_id, str(exc)))
        if progress is not None:
            progress(n, len(chosen))
    return result


def details(entry: ZooEntry) -> dict[str, str]:
    """``Experiment Details`` as a dict (``['CellLine=K562', 'Lab=X']`` -> ``{'CellLine': 'K562', ...}``)."""
    return dict(item.split("=", 1) for item in entry.experiment_details if "=" in item)


def chipseq_model(index: dict[str, ZooEntry], set_name: str) -> str:
    """The published ENCODE ChIP-seq model of a set named ``<TF>_<cell line>_<antibody>_<lab>``.

    The name is the ENCODE file's stem (``_AC.seq.gz`` / ``_B.seq.gz`` dropped; the antibody may
    itself hold underscores). The model's protein, cell line, antibody and lab must all match,
    and it must have a parameter file; none or several matches is an :class:`InputError`.
    """
    stem = Path(set_name).name
    for suffix in ("_AC.seq.gz", "_B.seq.gz", ".seq.gz"):
        stem = stem.removesuffix(suffix)
    parts = stem.split("_")
    if len(parts) < 4:
        raise InputError(set_name, "not an ENCODE set name <TF>_<cell line>_<antibody>_<lab>")
    want = {"CellLine": parts[1], "Antibody": "_".join(parts[2:-1]), "Lab": parts[-1]}
    found = [
        e.id
        for e in index.values()
        if not e.deprecated
        and e.experiment == "ChIP-seq"
        and e.protein.lower() == parts[0].lower()
        and all(details(e).get(k) == v for k, v in want.items())
    ]
    if len(found) != 1:
        what = "no" if not found else f"{len(found)} ({', '.join(found)})"
        raise InputError(set_name, f"{what} published ChIP-seq model of {parts[0]} with {want}")
    return found[0]
