"""Manifests, the patient-level split, and datasets that decode DICOM files into model inputs.

A manifest is a CSV with the columns ``path, patient_id, study_id, laterality, view`` and a
label column holding the 0/1 target: ``label`` unless the config's ``data.label_column`` (or
``--label-column``) names another, so one manifest serves several targets (e.g. MIAS's
``label`` = malignant and ``abnormal`` = any finding). ``mask`` is optional: a lesion mask PNG in
the stored pixel grid, for the pointing game. Relative paths are relative to the manifest's
folder.
"""

from __future__ import annotations

import csv
import functools
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from biocnn.errors import BiocnnError, InputError
from biocnn.io.dicom import read_mammogram
from biocnn.mammo.preprocess import Geometry, preprocess

REQUIRED_COLUMNS = ("path", "patient_id", "study_id", "laterality", "view")
LABEL_COLUMN = "label"  # the default label column


@dataclass
class Record:
    """One manifest row."""

    path: Path
    patient_id: str
    study_id: str
    laterality: str
    view: str
    label: int  # the value of the manifest's label column
    mask: Path | None = None


def read_manifest(path: str | Path, label_column: str = LABEL_COLUMN) -> list[Record]:
    """Read and check a manifest, taking the target from ``label_column``; errors name the
    file, the line and the problem."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "manifest not found")
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        columns = reader.fieldnames or []
        missing = [c for c in REQUIRED_COLUMNS if c not in columns]
        if missing:
            need = ", ".join((*REQUIRED_COLUMNS, label_column))
            raise InputError(path, f"missing column(s) {', '.join(missing)} (need {need})")
        if label_column not in columns:
            raise InputError(
                path, f"no label column {label_column!r} (label_column; the manifest has: {', '.join(columns)})"
            )
        records = []
        for line, row in enumerate(reader, start=2):
            lat = (row["laterality"] or "").strip().upper()
            if lat not in ("L", "R"):
                raise InputError(path, f"line {line}: laterality must be L or R, got {row['laterality']!r}")
            value = (row[label_column] or "").strip()
            if value not in ("0", "1"):
                raise InputError(path, f"line {line}: {label_column} must be 0 or 1, got {row[label_column]!r}")
            label = int(value)
            file = Path(row["path"])
            file = file if file.is_absolute() else path.parent / file
            mask = row.get("mask") or None
            mask_path = None if mask is None else (Path(mask) if Path(mask).is_absolute() else path.parent / mask)
            records.append(
                Record(
                    file,
                    row["patient_id"].strip(),
                    row["study_id"].strip(),
                    lat,
                    row["view"].strip().upper(),
                    label,
                    mask_path,
                )
            )
    if not records:
        raise InputError(path, "manifest has no rows")
    return records


def patient_split(
    records: Sequence[Record], val_fraction: float, test_fraction: float = 0.0, seed: int = 0
) -> dict[str, str]:
    """Assign every patient to ``train``, ``val`` or ``test`` (never more than one).

    Patients with and without a malignant image are split separately so each part keeps
    roughly the same proportion of cancers (stratified by patient).
    """
    if not 0 <= val_fraction < 1 or not 0 <= test_fraction < 1 or val_fraction + test_fraction >= 1:
        raise ValueError("val_fraction and test_fraction must be in [0, 1) and sum to less than 1")
    positive: dict[str, bool] = {}
    for r in records:
        positive[r.patient_id] = positive.get(r.patient_id, False) or bool(r.label)
    rng = np.random.default_rng(seed)
    assignment: dict[str, str] = {}
    for group in (True, False):
        patients = sorted(p for p, pos in positive.items() if pos == group)
        rng.shuffle(patients)
        n_test = int(round(test_fraction * len(patients)))
        n_val = int(round(val_fraction * len(patients)))
        for i, p in enumerate(patients):
            assignment[p] = "test" if i < n_test else "val" if i < n_test + n_val else "train"
    return assignment


@dataclass
class Decoded:
    """A decoded, preprocessed file, or the reason it could not be."""

    index: int
    image: np.ndarray | None
    reason: str = ""
    meta: dict[str, Any] | None = None
    geometry: Geometry | None = None


def decode_file(path: Path, size: tuple[int, int], depth: int | None, spatial_dims: int) -> Decoded:
    """Read and preprocess one file; every failure becomes a reason, never an exception."""
    try:
        mammo = read_mammogram(path, allow_volume=spatial_dims == 3)
        if spatial_dims == 3 and not mammo.is_volume:
            raise InputError(path, "a 2D view, but this model scores tomosynthesis volumes")
        image, geom = preprocess(mammo.pixels, mammo.laterality, size, depth if spatial_dims == 3 else None, path)
    except InputError as exc:
        return Decoded(-1, None, exc.problem)
    except MemoryError:
        return Decoded(-1, None, "image too large to decode in memory")
    except Exception as exc:  # noqa: BLE001 - a batch must go on; the reason is recorded
        return Decoded(
            -1, None, f"unexpected error: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        )
    meta = {
        "patient_id": mammo.patient_id,
        "study_id": mammo.study_id,
        "sop_id": mammo.sop_id,
        "laterality": mammo.laterality,
        "view": mammo.view,
    }
    return Decoded(-1, image, "", meta, geom)


class DecodeDataset(Dataset):
    """Decodes files on access (in DataLoader workers): ``{"index", "image", "reason", "meta"}``."""

    def __init__(self, paths: Sequence[Path], size: tuple[int, int], depth: int | None = None, spatial_dims: int = 2):
        self.paths = list(paths)
        self.size, self.depth, self.spatial_dims = tuple(size), depth, spatial_dims

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> Decoded:
        item = decode_file(self.paths[index], self.size, self.depth, self.spatial_dims)
        item.index = index
        return item


def collate_decoded(items: list[Decoded]) -> dict[str, Any]:
    """Batch the decoded images; failures travel alongside as (index, reason)."""
    ok = [it for it in items if it.image is not None]
    images = torch.from_numpy(np.stack([it.image for it in ok])[:, None]) if ok else None
    return {"images": images, "ok": ok, "failed": [(it.index, it.reason) for it in items if it.image is None]}


def _die_with_parent(parent: int, worker_id: int) -> None:
    """In a decoding worker: have Linux kill it when its parent dies (PR_SET_PDEATHSIG).

    PyTorch's own check of the parent runs only between items, so a worker busy decoding a
    huge or hostile file would otherwise outlive a killed run.
    """
    if sys.platform.startswith("linux"):
        import ctypes
        import signal

        try:
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent:  # the parent died before the request took effect
        os._exit(1)


def worker_init() -> Callable[[int], None]:
    """``worker_init_fn`` for DataLoaders that decode files: workers die with this process."""
    return functools.partial(_die_with_parent, os.getpid())


def surviving_workers(batches: Iterator[Any], advice: str) -> Iterator[Any]:
    """A DataLoader's batches; a decoding worker that died (killed, out of memory) becomes one
    line (:class:`BiocnnError`) ending with ``advice``, not a traceback."""
    while True:
        try:
            batch = next(batches)
        except StopIteration:
            return
        except RuntimeError as exc:
            if "DataLoader worker" not in str(exc):
                raise
            raise BiocnnError(
                f"a decoding worker stopped ({str(exc).splitlines()[0]}); {advice} "
                "(with fewer --workers if memory is short)"
            ) from None
        yield batch


def _single(batch: list[Decoded]) -> Decoded:
    return batch[0]


def decode_all(
    paths: Sequence[Path],
    size: tuple[int, int],
    depth: int | None,
    spatial_dims: int,
    workers: int = 0,
    desc: str = "decoding",
) -> list[Decoded]:
    """Decode ``paths`` (in parallel with ``workers``), in order."""
    from torch.utils.data import DataLoader
    from tqdm.auto import tqdm

    ds = DecodeDataset(paths, size, depth, spatial_dims)
    loader = DataLoader(
        ds, batch_size=1, num_workers=workers, collate_fn=_single, worker_init_fn=worker_init() if workers else None
    )
    batches = surviving_workers(iter(loader), "nothing was written: run again")
    return [item for item in tqdm(batches, total=len(ds), desc=desc, unit="img", leave=False)]


def augmentation(rotate: float, scale: float, translate: float, flip: bool, gamma: float, noise: float):
    """The MONAI training augmentation for one-channel images (2D or 3D)."""
    from monai.transforms import Compose, RandAdjustContrast, RandAffine, RandFlip, RandGaussianNoise

    transforms = [
        RandAffine(
            prob=0.8,
            rotate_range=rotate,
            scale_range=scale,
            translate_range=translate,
            padding_mode="zeros",
            mode="bilinear",
        )
    ]
    if flip:
        # Both axes: a lesion detector should not care which side its context lies on, and
        # without left-right flips the network learns to fire beside a lesion (towards the
        # chest wall), which pulls Grad-CAM's peak off it.
        transforms += [RandFlip(prob=0.5, spatial_axis=-2), RandFlip(prob=0.5, spatial_axis=-1)]
    if gamma > 0:
        transforms.append(RandAdjustContrast(prob=0.5, gamma=(1.0 / (1.0 + gamma), 1.0 + gamma)))
    if noise > 0:
        transforms.append(RandGaussianNoise(prob=0.3, std=noise))
    return Compose(transforms)


class CachedDataset(Dataset):
    """Decoded model inputs held in memory (float16), with optional MONAI augmentation.

    Augmentation draws its randomness from NumPy's global generator, which the training loop
    reseeds every epoch, so a run (and a resumed run) sees the same augmented images.
    """

    def __init__(self, images: Sequence[np.ndarray], labels: Sequence[int], transform=None):
        self.images = [np.asarray(im, dtype=np.float16) for im in images]
        self.labels = [float(y) for y in labels]
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.from_numpy(self.images[index].astype(np.float32))[None]
        if self.transform is not None:
            self.transform.set_random_state(seed=int(np.random.randint(2**31 - 1)))
            x = torch.as_tensor(self.transform(x), dtype=torch.float32)
        return x, torch.tensor(self.labels[index], dtype=torch.float32)
