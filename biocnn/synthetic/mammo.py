"""Generated screening mammograms written as real MG DICOM files (pydicom), from a seed.

``biocnn mammo synth --out DIR --exams N --seed S`` writes::

    DIR/dicom/exam-0001/L_CC.dcm ...   four views per exam (L-CC, L-MLO, R-CC, R-MLO)
    DIR/masks/exam-0001/L_CC.png ...   lesion mask (white = lesion) in the stored pixel grid
    DIR/dicom/exam-0001/L_CC_tomo.dcm  a few Breast Tomosynthesis multi-frame volumes
    DIR/manifest.csv                   path, patient_id, study_id, laterality, view, label, mask
    DIR/tomo_manifest.csv              the same for the volumes

Each exam is one patient and one study (proper UIDs, one series per view). About half of the
exams are malignant: one breast carries a spiculated mass and/or a cluster of
micro-calcifications, visible in both of its views, so the breast's two images are labelled 1.
Benign round densities (cysts) appear in every group, and density, contrast and lesion size
vary, so the task is learnable but not trivial.

The files cover what the reader must handle: MONOCHROME1 and MONOCHROME2, 10 to 16 stored
bits, RescaleSlope/Intercept, window centre/width, VOI LUT sequences, "For Processing" images
without VOI, right breasts stored mirrored (chest wall on the right), a bright lead marker
outside the breast, and RLE Lossless / JPEG 2000 Lossless compression.
"""

from __future__ import annotations

import csv
import datetime as dt
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from biocnn.io.atomic import atomic_open, atomic_path, write_text

VIEWS = (("L", "CC"), ("L", "MLO"), ("R", "CC"), ("R", "MLO"))
MANIFEST_COLUMNS = ("path", "patient_id", "study_id", "laterality", "view", "label", "mask")
MG_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.2"
MG_PROCESSING = "1.2.840.10008.5.1.4.1.1.1.2.1"
BREAST_TOMO = "1.2.840.10008.5.1.4.1.1.13.1.3"


@dataclass
class Lesion:
    """Where one breast's lesion sits, in fractions of the breast's extent."""

    y: float  # vertical position (0 top, 1 bottom)
    x: float  # depth from the chest wall (0) to the nipple (1)
    radius: float  # fraction of the image width
    contrast: float
    mass: bool
    calcs: bool
    seed: int


# --------------------------------------------------------------------------- anatomy
def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """Gaussian-filtered white noise, unit variance. Large sigmas are filtered on a coarser
    grid and interpolated up, which looks the same and costs a fraction."""
    factor = max(1, int(sigma // 2))
    small = tuple(max(2, -(-n // factor)) for n in shape)
    field = ndimage.gaussian_filter(rng.standard_normal(small).astype(np.float32), sigma / factor)
    if factor > 1:
        import torch
        import torch.nn.functional as F

        field = F.interpolate(torch.from_numpy(field)[None, None], size=shape, mode="bilinear", align_corners=False)[
            0, 0
        ].numpy()
    return field / (field.std() + 1e-6)


def breast_shape(rows: int, cols: int, view: str, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Breast mask and tissue-thickness map (chest wall on the left), both ``(rows, cols)``."""
    yy, xx = np.mgrid[0:rows, 0:cols].astype(np.float32)
    cy = rows * (0.5 if view == "CC" else 0.55) + rng.uniform(-0.04, 0.04) * rows
    ay = rows * rng.uniform(0.36, 0.44) * (1.0 if view == "CC" else 1.1)
    ax = cols * rng.uniform(0.6, 0.8)
    r2 = ((yy - cy) / ay) ** 2 + (xx / ax) ** 2
    mask = r2 < 1.0
    # Compressed breast: full thickness inside, falling off towards the skin line.
    thickness = np.clip(1.0 - r2, 0.0, 1.0) ** 0.35
    return mask, thickness


def tissue(rows: int, cols: int, view: str, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Display grey values in ``[0, 1]`` of a normal breast, and its mask."""
    mask, thickness = breast_shape(rows, cols, view, rng)
    density = rng.uniform(0.15, 0.6)  # fraction of fibroglandular tissue
    scale = cols / 100.0
    coarse = _smooth_noise(rng, (rows, cols), 6 * scale)
    fine = _smooth_noise(rng, (rows, cols), 1.5 * scale)
    # Glandular tissue concentrates behind the nipple, away from the skin line.
    yy, xx = np.mgrid[0:rows, 0:cols].astype(np.float32)
    centre = np.exp(-(((yy - rows / 2) / (0.3 * rows)) ** 2) - ((xx - 0.3 * cols) / (0.35 * cols)) ** 2)
    glandular = np.clip(density * centre + 0.18 * coarse + 0.08 * fine, 0.0, 1.0)
    img = (0.22 + 0.4 * glandular) * thickness
    if view == "MLO":
        # Pectoral muscle: a bright triangle along the top of the chest wall.
        depth = cols * rng.uniform(0.2, 0.3)
        height = rows * rng.uniform(0.35, 0.5)
        muscle = (xx / depth + yy / height) < 1.0
        img = np.where(muscle & mask, np.maximum(img, 0.6 + 0.05 * fine), img)
    img = np.where(mask, img, 0.0)
    return img.astype(np.float32), mask


def _cyst(img: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> None:
    """A benign round, smooth density (in place)."""
    rows, cols = img.shape
    ys, xs = np.nonzero(mask)
    i = rng.integers(len(ys))
    r = cols * rng.uniform(0.02, 0.05)
    yy, xx = np.ogrid[0:rows, 0:cols]
    d2 = ((yy - ys[i]) ** 2 + (xx - xs[i]) ** 2) / r**2
    img += (rng.uniform(0.05, 0.14) * np.exp(-(d2**2)) * mask).astype(np.float32)


def add_lesion(img: np.ndarray, mask: np.ndarray, lesion: Lesion) -> np.ndarray:
    """Draw a spiculated mass and/or calcification cluster (in place); returns the lesion mask."""
    rng = np.random.default_rng(lesion.seed)
    rows, cols = img.shape
    ys, xs = np.nonzero(mask)
    cy = ys.min() + lesion.y * (ys.max() - ys.min())
    cx = xs.min() + lesion.x * (xs.max() - xs.min())
    r = lesion.radius * cols
    yy, xx = np.mgrid[0:rows, 0:cols].astype(np.float32)
    dy, dx = yy - cy, xx - cx
    dist = np.hypot(dy, dx)
    angle = np.arctan2(dy, dx)
    lesion_mask = np.zeros(img.shape, dtype=bool)
    if lesion.mass:
        # Irregular outline: a few angular harmonics, plus thin spicules radiating out.
        outline = r * (1 + sum(rng.uniform(0.05, 0.18) * np.cos(k * angle + rng.uniform(0, 6.28)) for k in (2, 3, 5)))
        body = 1.0 / (1.0 + np.exp((dist - outline) / (0.08 * r)))
        spicules = np.zeros_like(img)
        for a in rng.uniform(0, 2 * np.pi, rng.integers(6, 12)):
            along = dx * np.cos(a) + dy * np.sin(a)
            across = np.abs(-dx * np.sin(a) + dy * np.cos(a))
            length = r * rng.uniform(1.6, 2.6)
            spicules = np.maximum(
                spicules,
                ((along > 0) & (along < length))
                * np.exp(-((across / (0.06 * r + 0.5)) ** 2))
                * (1 - np.clip(along / length, 0, 1)),
            )
        img += (lesion.contrast * np.maximum(body, 0.6 * spicules) * mask).astype(np.float32)
        lesion_mask |= dist < outline * 1.15
    if lesion.calcs:
        n = rng.integers(6, 16)
        spread = max(r * 0.8, 3.0)
        dot_sigma = max(0.8, cols / 350.0)
        for _ in range(n):
            oy, ox = rng.normal(0, spread / 2, 2)
            d2 = (yy - cy - oy) ** 2 + (xx - cx - ox) ** 2
            img += (rng.uniform(0.4, 0.7) * np.exp(-d2 / (2 * dot_sigma**2)) * mask).astype(np.float32)
        lesion_mask |= dist < spread * 1.6
    return lesion_mask & mask


def view_image(
    rows: int, cols: int, view: str, rng: np.random.Generator, lesion: Lesion | None
) -> tuple[np.ndarray, np.ndarray]:
    """One view (chest wall left) in ``[0, 1]`` and its lesion mask."""
    img, mask = tissue(rows, cols, view, rng)
    for _ in range(rng.integers(0, 3)):
        _cyst(img, mask, rng)
    lesion_mask = add_lesion(img, mask, lesion) if lesion is not None else np.zeros(img.shape, dtype=bool)
    # Quantum noise, then a lead marker (letters) in the corner away from the chest wall.
    img += (0.015 * rng.standard_normal(img.shape) * mask).astype(np.float32)
    img = np.clip(img, 0.0, 1.0)
    mh, mw = max(4, rows // 30), max(6, cols // 12)
    img[rows // 30 : rows // 30 + mh, cols - mw - cols // 30 : cols - cols // 30] = 0.95
    return img, lesion_mask


def random_lesion(rng: np.random.Generator) -> Lesion:
    kind = rng.uniform()
    return Lesion(
        y=rng.uniform(0.25, 0.75),
        x=rng.uniform(0.25, 0.7),
        radius=rng.uniform(0.035, 0.07),
        contrast=rng.uniform(0.16, 0.32),
        mass=kind < 0.85,
        calcs=kind > 0.55,
        seed=int(rng.integers(2**31)),
    )


# --------------------------------------------------------------------------- DICOM
def _uid(*parts) -> str:
    from pydicom.uid import generate_uid

    return generate_uid(entropy_srcs=[str(p) for p in parts])


def encode_pixels(img: np.ndarray, style: int, bits: int, rng: np.random.Generator) -> dict:
    """Stored values and the grey-value attributes of one of five encodings of ``img``.

    0: MONOCHROME2 + window; 1: MONOCHROME1 + window; 2: rescale slope/intercept + window in
    modality units; 3: VOI LUT sequence; 4: "For Processing", no VOI at all.
    """
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    top = 2**bits - 1
    attrs: dict = {"PhotometricInterpretation": "MONOCHROME2", "PresentationIntentType": "FOR PRESENTATION"}
    # Leave head-room so the window, not clipping, sets the contrast.
    lo, hi = 0.05 * top, 0.95 * top
    stored = lo + img * (hi - lo)
    centre, width = (lo + hi) / 2, (hi - lo)
    if style == 1:
        stored = top - stored
        attrs["PhotometricInterpretation"] = "MONOCHROME1"
        centre = top - centre
    elif style == 2:
        slope, intercept = 2.0, -float(rng.integers(100, 1000))
        attrs.update(RescaleSlope=f"{slope:g}", RescaleIntercept=f"{intercept:g}", RescaleType="US")
        centre = centre * slope + intercept
        width = width * slope
    elif style == 3:
        # VOI LUT indexed by the stored value itself (one entry per value), gamma-shaped,
        # 16-bit output. The caller keeps bits <= 12 for this style so the table stays small.
        entries = top + 1
        item = Dataset()
        item.LUTDescriptor = [entries if entries < 65536 else 0, 0, 16]
        item.LUTExplanation = "synthetic gamma"
        table = np.clip((np.arange(entries) - lo) / (hi - lo), 0, 1) ** 0.8 * 65535
        item.add_new("LUTData", "OW", table.astype("<u2").tobytes())
        attrs["VOILUTSequence"] = Sequence([item])
    elif style == 4:
        attrs["PresentationIntentType"] = "FOR PROCESSING"
    if style in (0, 1, 2):
        attrs.update(WindowCenter=f"{centre:.1f}", WindowWidth=f"{width:.1f}", VOILUTFunction="LINEAR")
    values = np.clip(np.rint(stored + rng.normal(0, 0.5, stored.shape)), 0, top).astype(np.uint16)
    return {"stored": values, "attrs": attrs}


def mg_dataset(
    stored: np.ndarray, attrs: dict, bits: int, ids: dict, laterality: str, view: str, sop_class: str, frames: int = 1
):
    """A complete MG dataset (file meta included) around ``stored`` pixel values."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.sequence import Sequence
    from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = ids["sop"]
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = ids["sop"]
    ds.StudyInstanceUID = ids["study"]
    ds.SeriesInstanceUID = ids["series"]
    ds.FrameOfReferenceUID = ids["frame_of_reference"]
    ds.PatientID = ids["patient_id"]
    ds.PatientName = ids["patient_name"]
    ds.PatientBirthDate = ids["birth_date"]
    ds.PatientSex = "F"
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = ids["study_date"]
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = "090000"
    ds.AccessionNumber = ids["accession"]
    ds.StudyID = ids["study_number"]
    ds.StudyDescription = "Synthetic screening mammogram (biocnn)"
    ds.Modality = "MG"
    ds.Manufacturer = "biocnn synthetic"
    ds.SeriesNumber = ids["series_number"]
    ds.InstanceNumber = 1
    ds.BodyPartExamined = "BREAST"
    ds.BurnedInAnnotation = "NO"
    ds.PatientOrientation = (
        ["P", "H" if view == "CC" else "FL"] if laterality == "L" else ["A", "H" if view == "CC" else "FR"]
    )
    if frames == 1:
        ds.ImageLaterality = laterality
        ds.Laterality = laterality
        ds.ViewPosition = view
        ds.ImageType = ["ORIGINAL", "PRIMARY", ""]
    else:
        ds.ImageType = ["ORIGINAL", "PRIMARY", "TOMOSYNTHESIS", "NONE"]
        ds.NumberOfFrames = frames
        anatomy = Dataset()
        anatomy.FrameLaterality = laterality
        region = Dataset()
        region.CodeValue, region.CodingSchemeDesignator, region.CodeMeaning = "T-04000", "SRT", "Breast"
        anatomy.AnatomicRegionSequence = Sequence([region])
        measures = Dataset()
        measures.PixelSpacing = [0.1, 0.1]
        measures.SliceThickness = 1.0
        shared = Dataset()
        shared.FrameAnatomySequence = Sequence([anatomy])
        shared.PixelMeasuresSequence = Sequence([measures])
        ds.SharedFunctionalGroupsSequence = Sequence([shared])
        code = Dataset()
        code.CodeValue = "R-10242" if view == "CC" else "R-10226"
        code.CodingSchemeDesignator = "SRT"
        code.CodeMeaning = "cranio-caudal" if view == "CC" else "medio-lateral oblique"
        ds.ViewCodeSequence = Sequence([code])
    ds.SamplesPerPixel = 1
    ds.Rows, ds.Columns = stored.shape[-2:]
    ds.BitsAllocated = 16
    ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = 0
    ds.PixelSpacing = [0.1, 0.1] if frames == 1 else None
    if frames != 1:
        del ds.PixelSpacing
    for key, value in attrs.items():
        setattr(ds, key, value)
    ds.PixelData = np.ascontiguousarray(stored, dtype="<u2").tobytes()
    return ds


def _write_dataset(ds, path: Path, syntax: str) -> None:
    """Compress if asked, then write atomically."""
    from pydicom.uid import JPEG2000Lossless, RLELossless

    if syntax == "rle":
        ds.compress(RLELossless)
    elif syntax == "j2k":
        ds.compress(JPEG2000Lossless)
    with atomic_path(path) as tmp:
        ds.save_as(tmp, enforce_file_format=True)


def _write_mask(mask: np.ndarray, path: Path) -> None:
    from PIL import Image

    with atomic_path(path) as tmp:
        Image.fromarray((mask * 255).astype(np.uint8)).save(tmp, format="PNG")


def read_mask(path: str | Path) -> np.ndarray:
    """A lesion mask PNG written by :func:`synthesize` as a boolean array."""
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im) > 127


def _exam_ids(seed: int, index: int) -> dict:
    rng = np.random.default_rng([seed, index, 7])
    birth = dt.date(1940, 1, 1) + dt.timedelta(days=int(rng.integers(0, 365 * 35)))
    study = dt.date(2020, 1, 1) + dt.timedelta(days=int(rng.integers(0, 1500)))
    return {
        "patient_id": f"SYN{seed:04d}{index:05d}",
        "patient_name": f"Synthetic^Patient{seed}x{index}",
        "birth_date": birth.strftime("%Y%m%d"),
        "study_date": study.strftime("%Y%m%d"),
        "accession": f"A{seed:04d}{index:06d}",
        "study_number": str(index),
        "study": _uid("study", seed, index),
        "frame_of_reference": _uid("for", seed, index),
    }


def write_view(
    out: Path,
    ids: dict,
    laterality: str,
    view: str,
    img: np.ndarray,
    lesion_mask: np.ndarray,
    rng: np.random.Generator,
    series_number: int,
    syntax: str | None = None,
    bits: int | None = None,
    style: int | None = None,
) -> tuple[Path, Path]:
    """Write one view's DICOM file (right breasts mirrored) and its mask PNG."""
    if laterality == "R":  # stored as acquired: chest wall on the right
        img, lesion_mask = img[:, ::-1], lesion_mask[:, ::-1]
    bits = bits if bits is not None else int(rng.choice([10, 12, 14, 16]))
    style = style if style is not None else int(rng.choice(5, p=[0.35, 0.2, 0.15, 0.15, 0.15]))
    syntax = syntax if syntax is not None else str(rng.choice(["native", "rle", "j2k"], p=[0.8, 0.1, 0.1]))
    if style == 3:
        bits = min(bits, 12)
    enc = encode_pixels(img, style, bits, rng)
    view_ids = dict(
        ids,
        sop=_uid("sop", ids["study"], laterality, view),
        series=_uid("series", ids["study"], laterality, view),
        series_number=series_number,
    )
    sop_class = MG_PROCESSING if enc["attrs"]["PresentationIntentType"] == "FOR PROCESSING" else MG_PRESENTATION
    ds = mg_dataset(enc["stored"], enc["attrs"], bits, view_ids, laterality, view, sop_class)
    dcm_path = out / "dicom" / ids["exam"] / f"{laterality}_{view}.dcm"
    mask_path = out / "masks" / ids["exam"] / f"{laterality}_{view}.png"
    dcm_path.parent.mkdir(parents=True, exist_ok=True)
    _write_dataset(ds, dcm_path, syntax)
    _write_mask(lesion_mask, mask_path)
    return dcm_path, mask_path


def write_tomo(
    out: Path,
    ids: dict,
    laterality: str,
    view: str,
    rows: int,
    cols: int,
    frames: int,
    lesion: Lesion | None,
    rng: np.random.Generator,
) -> tuple[Path, Path]:
    """One Breast Tomosynthesis volume: slices share the outline, differ in texture."""
    base, mask = tissue(rows, cols, view, rng)
    slices, lesion_mask = [], np.zeros((rows, cols), dtype=bool)
    centre = frames // 2 + int(rng.integers(-frames // 4, frames // 4 + 1))
    for z in range(frames):
        sl = 0.7 * base + 0.3 * tissue(rows, cols, view, np.random.default_rng(rng.integers(2**31)))[0] * mask
        if lesion is not None and abs(z - centre) <= 1:
            lesion_mask |= add_lesion(sl, mask, lesion)
        slices.append(np.clip(sl + 0.01 * rng.standard_normal(sl.shape) * mask, 0, 1))
    vol = np.stack(slices).astype(np.float32)
    if laterality == "R":
        vol, lesion_mask = vol[..., ::-1], lesion_mask[:, ::-1]
    bits = 12
    enc = encode_pixels(vol, 0, bits, rng)
    view_ids = dict(
        ids,
        sop=_uid("tomo", ids["study"], laterality, view),
        series=_uid("tomo-series", ids["study"], laterality, view),
        series_number=10,
    )
    ds = mg_dataset(enc["stored"], enc["attrs"], bits, view_ids, laterality, view, BREAST_TOMO, frames)
    dcm_path = out / "dicom" / ids["exam"] / f"{laterality}_{view}_tomo.dcm"
    mask_path = out / "masks" / ids["exam"] / f"{laterality}_{view}_tomo.png"
    dcm_path.parent.mkdir(parents=True, exist_ok=True)
    _write_dataset(ds, dcm_path, "native")
    _write_mask(lesion_mask, mask_path)
    return dcm_path, mask_path


def _write_manifest(path: Path, rows: list[dict]) -> None:
    with atomic_open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=MANIFEST_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)


def synthesize(
    out: str | Path,
    exams: int,
    seed: int = 0,
    rows: int = 640,
    cols: int = 512,
    tomo: int = 2,
    tomo_frames: int = 8,
    malignant_fraction: float = 0.5,
    syntax: str | None = None,
    bits: int | None = None,
) -> dict:
    """Write ``exams`` four-view exams (and ``tomo`` volumes) under ``out``; see the module doc.

    ``syntax`` ("native", "rle", "j2k") and ``bits`` force one encoding for every file (the
    speed benchmark wants uncompressed 16-bit); by default they vary per file.
    Returns counts and the manifest paths.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    manifest, tomo_manifest = [], []
    for index in range(exams):
        rng = np.random.default_rng([seed, index])
        ids = dict(_exam_ids(seed, index), exam=f"exam-{index:04d}")
        malignant = rng.uniform() < malignant_fraction
        side = "L" if rng.uniform() < 0.5 else "R"
        lesion = random_lesion(rng) if malignant else None
        for number, (laterality, view) in enumerate(VIEWS, start=1):
            this = lesion if (lesion is not None and laterality == side) else None
            if this is not None and view == "MLO":  # the same lesion seen from the side
                this = Lesion(**{**this.__dict__, "y": float(np.clip(this.y + rng.uniform(-0.1, 0.1), 0.2, 0.8))})
            img, lesion_mask = view_image(rows, cols, view, rng, this)
            dcm, mask = write_view(out, ids, laterality, view, img, lesion_mask, rng, number, syntax, bits)
            manifest.append(
                {
                    "path": dcm.relative_to(out).as_posix(),
                    "patient_id": ids["patient_id"],
                    "study_id": ids["study"],
                    "laterality": laterality,
                    "view": view,
                    "label": int(this is not None),
                    "mask": mask.relative_to(out).as_posix(),
                }
            )
        if index < tomo:
            for laterality, view in (("L", "CC"), ("R", "CC")):
                this = lesion if (lesion is not None and laterality == side) else None
                dcm, mask = write_tomo(out, ids, laterality, view, rows // 2, cols // 2, tomo_frames, this, rng)
                tomo_manifest.append(
                    {
                        "path": dcm.relative_to(out).as_posix(),
                        "patient_id": ids["patient_id"],
                        "study_id": ids["study"],
                        "laterality": laterality,
                        "view": view,
                        "label": int(this is not None),
                        "mask": mask.relative_to(out).as_posix(),
                    }
                )
    _write_manifest(out / "manifest.csv", manifest)
    _write_manifest(out / "tomo_manifest.csv", tomo_manifest)
    summary = {
        "exams": exams,
        "images": len(manifest),
        "volumes": len(tomo_manifest),
        "malignant_images": sum(r["label"] for r in manifest),
        "seed": seed,
        "manifest": str(out / "manifest.csv"),
        "tomo_manifest": str(out / "tomo_manifest.csv"),
    }
    write_text(
        out / "README.txt",
        f"Synthetic mammograms generated by `biocnn mammo synth` (seed {seed}); not real patients.\n",
    )
    return summary
