"""Finding cases, reading them with checks, and the MONAI pipelines that feed the U-Net.

Layouts:

* 2D: ``DIR/images/<id>.png|.tif`` with ``DIR/labels/<id>.png|.tif`` (labels optional for
  prediction); a plain directory of images or a single image file also works for prediction.
* 3D: one directory per case, ``DIR/<id>/<id>_<modality>.nii.gz`` for each configured
  modality (BraTS style) or one 4D ``DIR/<id>/<id>_image.nii.gz``, with the label in
  ``DIR/<id>/<id>_seg.nii.gz``. A single case directory or a single 4D file works for
  prediction.
* A datalist: a MONAI / Medical Segmentation Decathlon JSON file
  (``{"training": [{"image": ..., "label": ...}], "test": [...]}``, ``image`` one path or a
  list of paths in modality order, paths relative to the JSON file's folder), read with
  :func:`monai.data.load_decathlon_datalist`. Which list is read is the caller's ``datalist_key``
  (training reads ``training``, validation ``validation``, prediction and evaluation ``test``).

:class:`LoadCased` reads a case and checks it (shapes and affines agree across modalities and
with the label, no NaN/Inf, label values known, a 2D file is not given to a 3D model); every
error names the case and file. The rest of the pipeline is MONAI: orientation, spacing,
intensity normalisation, positive/negative balanced patch sampling and augmentation, with
the deterministic part cached by :class:`monai.data.CacheDataset`.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from biocnn.errors import BiocnnError, InputError
from biocnn.io.images import IMAGE_SUFFIXES, is_image_file, read_image, read_label, to_grey
from biocnn.io.nifti import is_nifti_file, nifti_stem, read_label_volume, read_volume

log = logging.getLogger(__name__)

# The smallest image side segmented (the overlay's contours need 2 x 2; smaller is no image to segment).
MIN_SIDE = 2


@dataclass
class Case:
    """One input: its id, image file(s) (one per modality, or one) and optional label file."""

    id: str
    images: list[Path]
    label: Path | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """The dict MONAI transforms start from (paths as strings)."""
        return {
            "case": self.id,
            "images": [str(p) for p in self.images],
            "label": str(self.label) if self.label else "",
        }


# ----------------------------------------------------------------------------- discovery
def _find_by_stem(directory: Path, stem: str) -> Path | None:
    for suffix in IMAGE_SUFFIXES:
        for candidate in (directory / f"{stem}{suffix}", directory / f"{stem}{suffix.upper()}"):
            if candidate.is_file():
                return candidate
    return None


def _bad_case(failures: list[dict[str, str]] | None, case_id: str, exc: InputError) -> None:
    """Record a case that cannot be used in ``failures``, or raise when there is no list (training)."""
    if failures is None:
        raise exc
    failures.append({"case": case_id, "error": str(exc)})
    log.error("%s: %s", case_id, exc)


def find_cases_2d(
    path: str | Path, require_labels: bool = False, failures: list[dict[str, str]] | None = None
) -> list[Case]:
    """2D cases from an image file, a directory of images, or ``DIR/images`` + ``DIR/labels``.

    With a ``failures`` list, a file that cannot be a case (a NIfTI volume, an image without its
    label, a second image with the same id) is appended to it and the others are returned;
    without one it raises.
    """
    path = Path(path)
    if path.is_file():
        if is_nifti_file(path):
            raise InputError(path, "is a NIfTI volume but the model is 2D (PNG/TIFF images)")
        return [Case(path.stem, [path])]
    if not path.is_dir():
        raise InputError(path, "no such file or directory")
    image_dir = path / "images" if (path / "images").is_dir() else path
    label_dir = path / "labels"
    cases, seen = [], {}
    for image in sorted(p for p in image_dir.iterdir() if p.is_file() and not p.name.startswith(".")):
        if is_nifti_file(image):
            problem = "is a NIfTI volume but the model is 2D (PNG/TIFF images)"
            _bad_case(failures, nifti_stem(image), InputError(image, problem))
            continue
        if not is_image_file(image):
            continue
        if image.stem in seen:  # e.g. a.png and a.tif: their outputs would overwrite each other
            problem = f"the same case id {image.stem!r} as {seen[image.stem].name}"
            _bad_case(failures, image.name, InputError(image, problem))
            continue
        seen[image.stem] = image
        label = _find_by_stem(label_dir, image.stem) if label_dir.is_dir() else None
        if require_labels and label is None:
            _bad_case(failures, image.stem, InputError(image, f"no label mask {label_dir}/{image.stem}.png|.tif"))
            continue
        cases.append(Case(image.stem, [image], label))
    if not cases and not failures:
        raise InputError(image_dir, "no PNG or TIFF images found")
    return cases


def _case_from_dir(directory: Path, modalities: Sequence[str]) -> Case:
    cid = directory.name

    def find(suffix: str) -> Path | None:
        for ext in (".nii.gz", ".nii"):
            p = directory / f"{cid}_{suffix}{ext}"
            if p.is_file():
                return p
        return None

    label = find("seg")
    four_d = find("image")
    if four_d is not None:
        return Case(cid, [four_d], label)
    images, missing = [], []
    for mod in modalities:
        p = find(mod)
        (images if p else missing).append(p or mod)
    if missing:
        raise InputError(
            directory, f"case {cid}: missing modality file(s) " + ", ".join(f"{cid}_{m}.nii.gz" for m in missing)
        )
    return Case(cid, images, label)


def find_cases_3d(
    path: str | Path,
    modalities: Sequence[str],
    require_labels: bool = False,
    failures: list[dict[str, str]] | None = None,
) -> list[Case]:
    """3D cases from a 4D NIfTI file, one case directory, or a directory of case directories.

    With a ``failures`` list, an entry that cannot be a case (a case missing a modality or its
    label, a 2D image among the case folders) is appended to it and the others are returned;
    without one it raises.
    """
    path = Path(path)
    if path.is_file():
        if is_image_file(path):
            raise InputError(path, "is a 2D image but the model is 3D (NIfTI volumes)")
        if not is_nifti_file(path):
            raise InputError(path, "not a NIfTI file")
        return [Case(nifti_stem(path), [path])]
    if not path.is_dir():
        raise InputError(path, "no such file or directory")
    for image in sorted(p for p in path.iterdir() if p.is_file() and is_image_file(p)):
        _bad_case(failures, image.stem, InputError(image, "is a 2D image but the model is 3D (NIfTI volumes)"))
    own = [p for p in path.iterdir() if p.is_file() and is_nifti_file(p) and p.name.startswith(path.name + "_")]
    dirs = [path] if own else sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))
    cases = []
    for d in dirs:
        try:
            case = _case_from_dir(d, modalities)
            if require_labels and case.label is None:
                raise InputError(path / case.id, f"case {case.id}: no label file {case.id}_seg.nii.gz")
        except InputError as exc:
            _bad_case(failures, d.name, exc)
            continue
        cases.append(case)
    if not cases and not failures:
        raise InputError(path, "no cases found (expected <case>/<case>_<modality>.nii.gz)")
    return cases


def is_datalist(path: str | Path) -> bool:
    """True for a ``.json`` path: a datalist rather than a folder or an image."""
    return Path(path).suffix.lower() == ".json"


def _datalist_entries(path: Path, key: str) -> list[dict[str, Any]]:
    """The ``key`` list of the datalist at ``path``, paths made absolute (MONAI's reader)."""
    import json

    from monai.data import load_decathlon_datalist

    if not path.is_file():
        raise InputError(path, "datalist file not found")
    try:
        with open(path, encoding="utf-8") as fh:
            content = json.load(fh)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(path, f"cannot read the datalist: {exc}") from None
    if not isinstance(content, dict) or key not in content:
        keys = ", ".join(repr(k) for k in content) if isinstance(content, dict) else "none: not a JSON object"
        raise InputError(path, f"datalist has no {key!r} list (its keys: {keys})")
    if not isinstance(content[key], list):
        raise InputError(path, f"datalist {key!r} is not a list")
    if not content[key]:
        return []
    try:
        return load_decathlon_datalist(path, is_segmentation=True, data_list_key=key, base_dir=path.parent)
    except (TypeError, ValueError) as exc:  # an entry that is not a {"image": ...} object
        raise InputError(path, f"datalist {key!r}: {exc}") from None


def _entry_paths(value: Any) -> list[Path] | None:
    """An entry's ``image`` (a path or a list of paths) as paths; None when malformed."""
    values = value if isinstance(value, list) else [value]
    if not values or not all(isinstance(v, str) and v for v in values):
        return None
    return [Path(v) for v in values]


def _datalist_ids(entries: Sequence[list[Path]]) -> list[str]:
    """Case ids of datalist entries.

    An entry of one image file is named by that file (without suffix), an entry of several (one
    per modality, e.g. BRATS' ``Flair_subtrMeanDivStd.nii.gz`` in every case folder) by their
    folder; where those names repeat in the list the other naming is tried, then ``entry<N>``.
    """

    def by_file(images: list[Path]) -> str:
        return nifti_stem(images[0]) if is_nifti_file(images[0]) else images[0].stem

    def by_folder(images: list[Path]) -> str:
        return images[0].parent.name

    several = any(len(images) > 1 for images in entries)
    for name in (by_folder, by_file) if several else (by_file, by_folder):
        ids = [name(images) for images in entries]
        if len(set(ids)) == len(ids) and all(ids):
            return ids
    return [f"entry{i}" for i in range(len(entries))]


def find_cases_datalist(
    path: str | Path,
    key: str,
    spatial_dims: int,
    require_labels: bool = False,
    failures: list[dict[str, str]] | None = None,
) -> list[Case]:
    """The cases of the ``key`` list of a datalist JSON (see the module doc).

    An entry whose files are missing, or that has no label when ``require_labels``, names the
    JSON file, the entry and the path; with a ``failures`` list it is appended there and the
    other entries are returned, without one it raises.
    """
    path = Path(path)
    raw = _datalist_entries(path, key)
    entries, problems = [], []
    for i, item in enumerate(raw):
        images = _entry_paths(item.get("image"))
        if images is None:
            problems.append((i, f"entry {i} of {key!r}: 'image' must be a path or a list of paths"))
            entries.append([Path(f"entry{i}")])
            continue
        entries.append(images)
        problems.append((i, None))
    ids = _datalist_ids(entries)
    cases = []
    for (i, problem), images, cid in zip(problems, entries, ids):
        item = raw[i]
        label = item.get("label")
        if problem is None and label is not None and not (isinstance(label, str) and label):
            problem = f"entry {i} of {key!r}: 'label' must be a path"
        if problem is None:
            missing = [p for p in [*images, *([Path(label)] if label else [])] if not p.is_file()]
            if missing:
                problem = f"entry {i} of {key!r}: file not found: {missing[0]}"
        if problem is None and require_labels and not label:
            problem = f"entry {i} of {key!r}: no 'label'"
        if problem is None and spatial_dims == 2 and len(images) != 1:
            problem = f"entry {i} of {key!r}: {len(images)} image files; a 2D case is one image file"
        if problem is not None:
            _bad_case(failures, cid, InputError(path, problem))
            continue
        cases.append(Case(cid, images, Path(label) if label else None))
    if not cases and not failures:
        raise InputError(path, f"datalist {key!r} lists no cases")
    return cases


def find_cases(
    path: str | Path,
    spatial_dims: int,
    modalities: Sequence[str] = (),
    require_labels: bool = False,
    failures: list[dict[str, str]] | None = None,
    datalist_key: str = "test",
) -> list[Case]:
    """The cases under ``path`` for a 2D or 3D model (``failures``: see :func:`find_cases_3d`).

    A ``.json`` path is a datalist, whose ``datalist_key`` list is read.
    """
    if is_datalist(path):
        return find_cases_datalist(path, datalist_key, spatial_dims, require_labels, failures)
    if spatial_dims == 2:
        return find_cases_2d(path, require_labels, failures)
    return find_cases_3d(path, modalities, require_labels, failures)


# ----------------------------------------------------------------------------- reading
def label_to_index(label: np.ndarray, label_values: Sequence[int], case_id: str, path: Path) -> np.ndarray:
    """Map label values (e.g. BraTS 0, 1, 2, 4) to class indices 0..C-1; unknown values fail."""
    values = np.unique(label)
    unknown = sorted(set(values.tolist()) - set(int(v) for v in label_values))
    if unknown:
        raise InputError(path, f"case {case_id}: unknown label values {unknown} (expected {list(label_values)})")
    lut = np.zeros(int(max(max(label_values), values.max(initial=0))) + 1, np.int64)
    for i, v in enumerate(label_values):
        lut[int(v)] = i
    return lut[label]


def index_to_label(index: np.ndarray, label_values: Sequence[int]) -> np.ndarray:
    """Class indices back to label values."""
    return np.asarray(label_values)[index]


def read_case_2d(case: Case, in_channels: int) -> tuple[np.ndarray, np.ndarray | None]:
    """``(image (C, H, W) float32, label (H, W) label values or None)`` with checks."""
    path = case.images[0]
    if is_nifti_file(path):
        raise InputError(path, f"case {case.id}: a NIfTI volume given to a 2D model")
    image = read_image(path)
    if min(image.shape[1:]) < MIN_SIDE:
        height, width = image.shape[1:]
        raise InputError(
            path, f"case {case.id}: image is {width} x {height} pixels; at least {MIN_SIDE} x {MIN_SIDE} needed"
        )
    if image.shape[0] != in_channels:
        if in_channels == 3 and image.shape[0] == 1:
            image = np.repeat(image, 3, axis=0)  # grayscale into an RGB model: replicate
        elif in_channels == 1 and image.shape[0] == 3:
            image = to_grey(image)  # RGB into a grey model: the grey value (R = G = B) or the luma
        else:
            raise InputError(
                path, f"case {case.id}: image has {image.shape[0]} channel(s), the model expects {in_channels}"
            )
    label = None
    if case.label is not None:
        label = read_label(case.label)
        if label.shape != image.shape[1:]:
            raise InputError(
                case.label, f"case {case.id}: label shape {label.shape} does not match image shape {image.shape[1:]}"
            )
    return image, label


def read_case_3d(case: Case, in_channels: int) -> tuple[np.ndarray, np.ndarray | None, Any]:
    """``(image (C, X, Y, Z) float32, label or None, reference nibabel image)`` with checks."""
    arrays, ref = [], None
    for path in case.images:
        if is_image_file(path):
            raise InputError(path, f"case {case.id}: a 2D image given to a 3D model")
        data, img = read_volume(path)
        if data.ndim == 2 or (data.ndim == 3 and min(data.shape) == 1):
            raise InputError(path, f"case {case.id}: a 2D image (shape {data.shape}) given to a 3D model")
        if data.ndim == 4:
            arrays.extend(np.moveaxis(data, -1, 0))
        elif data.ndim == 3:
            arrays.append(data)
        else:
            raise InputError(path, f"case {case.id}: expected a 3D or 4D volume, got shape {data.shape}")
        if ref is None:
            ref = img
        else:
            if data.shape[:3] != ref.shape[:3]:
                raise InputError(
                    path, f"case {case.id}: shape {data.shape[:3]} differs from {case.images[0].name} {ref.shape[:3]}"
                )
            if not np.allclose(img.affine, ref.affine, atol=1e-3):
                raise InputError(path, f"case {case.id}: affine differs from {case.images[0].name}")
    if len(arrays) != in_channels:
        raise InputError(case.images[0], f"case {case.id}: {len(arrays)} modalities, the model expects {in_channels}")
    image = np.stack(arrays).astype(np.float32)
    label = None
    if case.label is not None:
        ldata, limg = read_label_volume(case.label)
        if ldata.shape != image.shape[1:]:
            raise InputError(
                case.label, f"case {case.id}: label shape {ldata.shape} does not match image shape {image.shape[1:]}"
            )
        if not np.allclose(limg.affine, ref.affine, atol=1e-3):
            raise InputError(case.label, f"case {case.id}: label affine differs from the image's")
        label = ldata
    return image, label, ref


# ----------------------------------------------------------------------------- MONAI
def _load_transform(spatial_dims: int, in_channels: int, label_values: Sequence[int], train: bool):
    from monai.data import MetaTensor
    from monai.transforms import MapTransform

    class LoadCased(MapTransform):
        """Read a case dict (``images``, ``label``) into ``image``/``label`` MetaTensors."""

        def __init__(self):
            super().__init__(keys=["images"])

        def __call__(self, data):
            d = dict(data)
            case = Case(d["case"], [Path(p) for p in d["images"]], Path(d["label"]) if d["label"] else None)
            if spatial_dims == 2:
                image, label = read_case_2d(case, in_channels)
                affine = np.eye(4)
            else:
                image, label, ref = read_case_3d(case, in_channels)
                affine = ref.affine
            d["image"] = MetaTensor(image, affine=affine)
            if label is not None:
                idx = label_to_index(label, label_values, case.id, case.label)
                if train and not idx.any():
                    log.warning("case %s: label %s is empty (no foreground)", case.id, case.label)
                d["label"] = MetaTensor(idx[None].astype(np.int64), affine=affine)
            else:
                d.pop("label", None)
            return d

    return LoadCased()


def above_minimum(image):
    """Foreground for cropping: voxels above their channel's minimum (a constant background,
    zero or the negative value of a volume z-scored inside the head, is the minimum)."""
    spatial = tuple(range(1, image.ndim))
    return image > image.amin(dim=spatial, keepdim=True)


def preprocessing(cfg, train: bool = True, with_label: bool = True):
    """The deterministic (cached) transforms: load + check, orientation, spacing, foreground
    crop, intensity normalisation (``data.normalize``).

    ``cfg`` is a :class:`~biocnn.segment.config.DataConfig` (or the ``data`` dict of a model
    directory's config.json, validated into one).
    """
    from monai.transforms import Compose, CropForegroundd, NormalizeIntensityd, Orientationd, Spacingd

    keys = ["image", "label"] if with_label else ["image"]
    ts = [_load_transform(cfg.spatial_dims, cfg.in_channels, cfg.label_values, train)]
    if cfg.spatial_dims == 3:
        ts.append(Orientationd(keys=keys, axcodes="RAS", labels=None))
        if cfg.pixdim:
            ts.append(
                Spacingd(keys=keys, pixdim=cfg.pixdim, mode=("bilinear", "nearest") if with_label else "bilinear")
            )
    if cfg.crop_foreground:
        ts.append(CropForegroundd(keys=keys, source_key="image", select_fn=above_minimum, allow_smaller=True))
    if cfg.normalize != "none":
        ts.append(NormalizeIntensityd(keys="image", nonzero=cfg.normalize == "nonzero", channel_wise=True))
    return Compose(ts)


def augmentation(cfg, seed: int):
    """Training transforms: padding to the patch size and the sampler's voxel indices, as plain
    tensors (all deterministic, so :class:`~monai.data.CacheDataset` caches them with the
    preprocessing), then the random part: balanced patch sampling (foreground/background or per
    class), flips, rotations, intensity, run without MONAI's metadata tracking (:func:`without_metadata`)."""
    from monai.transforms import (
        ClassesToIndicesd,
        Compose,
        DeleteItemsd,
        EnsureTyped,
        FgBgToIndicesd,
        RandCropByLabelClassesd,
        RandCropByPosNegLabeld,
        RandFlipd,
        RandGaussianNoised,
        RandRotate90d,
        RandScaleIntensityd,
        RandShiftIntensityd,
        SpatialPadd,
    )

    keys = ["image", "label"]
    if cfg.class_ratios is not None:  # centres drawn per class; a class absent from an image is skipped there
        indices = ClassesToIndicesd(keys="label", num_classes=len(cfg.label_values))
        index_keys = ["label_cls_indices"]
        crop = RandCropByLabelClassesd(
            keys=keys,
            label_key="label",
            spatial_size=cfg.patch_size,
            ratios=cfg.class_ratios,
            num_classes=len(cfg.label_values),
            num_samples=cfg.samples_per_image,
            indices_key="label_cls_indices",
            warn=False,
        )
    else:
        indices = FgBgToIndicesd(keys="label")
        index_keys = ["label_fg_indices", "label_bg_indices"]
        crop = RandCropByPosNegLabeld(
            keys=keys,
            label_key="label",
            spatial_size=cfg.patch_size,
            pos=cfg.pos_fraction,
            neg=1 - cfg.pos_fraction,
            num_samples=cfg.samples_per_image,
            fg_indices_key="label_fg_indices",
            bg_indices_key="label_bg_indices",
        )
    rand = [crop, DeleteItemsd(keys=index_keys)]  # the patches need no indices (and they do not collate)
    rand += [RandFlipd(keys=keys, prob=0.5, spatial_axis=a) for a in range(cfg.spatial_dims)]
    if cfg.spatial_dims == 2:
        rand.append(RandRotate90d(keys=keys, prob=0.5, spatial_axes=(0, 1)))
    rand += [
        RandScaleIntensityd(keys="image", factors=0.1, prob=0.5),
        RandShiftIntensityd(keys="image", offsets=0.05, prob=0.5),
        RandGaussianNoised(keys="image", prob=0.2, std=0.02),
    ]
    fixed = [SpatialPadd(keys=keys, spatial_size=cfg.patch_size), indices, EnsureTyped(keys=keys, track_meta=False)]
    aug = Compose([*fixed, without_metadata(Compose(rand))])
    aug.set_random_state(seed=seed)  # MONAI's own RNG: same seed, same patches
    return aug


def without_metadata(transform):
    """``transform`` run with MONAI's metadata tracking off (:func:`monai.data.set_track_meta`),
    so it takes and gives plain tensors.

    A ``MetaTensor`` sends every operation through its ``__torch_function__`` and copies its
    metadata; on small training patches that bookkeeping took about two thirds of the
    augmentation's time. The wrapper is randomizable (``set_random_state`` reaches the wrapped
    transforms), so :class:`~monai.data.CacheDataset` stops caching before it.
    """
    from monai.data import get_track_meta, set_track_meta
    from monai.transforms import Randomizable

    class WithoutMetadata(Randomizable):
        def __init__(self, inner):
            self.inner = inner

        def set_random_state(self, seed=None, state=None):
            self.inner.set_random_state(seed=seed, state=state)
            return self

        def randomize(self, data) -> None:  # the wrapped transforms draw their own
            pass

        def __call__(self, data):
            tracking = get_track_meta()
            set_track_meta(False)
            try:
                return self.inner(data)
            finally:
                set_track_meta(tracking)

    return WithoutMetadata(transform)


@contextlib.contextmanager
def user_errors():
    """Re-raise a :class:`BiocnnError` that MONAI wrapped in ``RuntimeError("applying transform")``.

    The command line then prints the one-line message naming the case and file.
    """
    try:
        yield
    except BiocnnError:
        raise
    except Exception as exc:
        cause = exc.__cause__
        while cause is not None and not isinstance(cause, BiocnnError):
            cause = cause.__cause__
        if cause is not None:
            raise cause from None
        raise


def load_case(transform, case: Case) -> dict[str, Any]:
    """Run the preprocessing ``transform`` on one case, with user errors unwrapped."""
    with user_errors():
        return transform(case.as_dict())


def cached_dataset(cases: Sequence[Case], transform, cache_rate: float = 1.0, copy_cache: bool = True):
    """A :class:`monai.data.CacheDataset`: the deterministic transforms run once per case.

    ``copy_cache=False`` hands the cached item itself to the random transforms instead of a deep
    copy (the copy of a large image and its sampler indices cost more than the augmentation):
    only for transforms that never change their input in place, as :func:`augmentation`'s.
    """
    from monai.data import CacheDataset

    with user_errors():
        return CacheDataset(
            [c.as_dict() for c in cases],
            transform=transform,
            cache_rate=cache_rate,
            num_workers=0,
            progress=False,
            copy_cache=copy_cache,
        )
