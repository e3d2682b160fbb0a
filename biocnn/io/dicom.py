"""Reading mammograms (and tomosynthesis volumes) from DICOM files with pydicom.

:func:`read_mammogram` turns one file into a :class:`Mammogram`: grey values in ``[0, 1]``
where bright means dense tissue, whatever the file's photometric interpretation, bit depth,
rescale or VOI settings, plus the laterality, view and study identifiers. Every way a file can
be unusable (not DICOM, not MG, no pixel data, truncated, a transfer syntax no installed plugin
decodes, colour, no laterality) raises :class:`~biocnn.errors.InputError` naming the file and
the reason, so batch commands can list the file and go on.

Grey-value pipeline, in the order DICOM (PS3.4 N.2) prescribes:

1. stored values -> modality values: Modality LUT Sequence or RescaleSlope/RescaleIntercept;
2. modality values -> display values: VOI LUT Sequence, else WindowCenter/WindowWidth (with
   VOILUTFunction LINEAR, LINEAR_EXACT or SIGMOID), else a robust percentile window (typical of
   "For Processing" images, which carry no VOI);
3. MONOCHROME1 (minimum = white) is inverted so that 1 is always the brightest.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from biocnn.errors import InputError

# SOP classes that hold mammograms even when Modality is missing or odd.
MG_SOP_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.1.2": "Digital Mammography X-Ray Image Storage - For Presentation",
    "1.2.840.10008.5.1.4.1.1.1.2.1": "Digital Mammography X-Ray Image Storage - For Processing",
    "1.2.840.10008.5.1.4.1.1.13.1.3": "Breast Tomosynthesis Image Storage",
    "1.2.840.10008.5.1.4.1.1.13.1.4": "Breast Projection X-Ray Image Storage - For Presentation",
    "1.2.840.10008.5.1.4.1.1.13.1.5": "Breast Projection X-Ray Image Storage - For Processing",
}
TOMO_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.13.1.3"

# ViewPosition values (PS3.3 C.8.11.7) grouped into the two standard screening views.
CC_VIEWS = {"CC", "XCC", "XCCL", "XCCM", "FB", "RCC"}
MLO_VIEWS = {"MLO", "ML", "LM", "LMO", "SIO", "RMLO"}
# SNOMED codes of the View Code Sequence (CID 4014) for images without ViewPosition.
VIEW_CODES = {
    "R-10242": "CC",
    "399162004": "CC",
    "R-102D0": "CC",
    "R-102CF": "CC",
    "R-1024A": "CC",
    "R-10226": "MLO",
    "399368009": "MLO",
    "R-10224": "MLO",
    "R-10228": "MLO",
    "R-10230": "MLO",
}


@dataclass
class Mammogram:
    """One decoded mammogram or tomosynthesis volume.

    ``pixels`` is float32 in ``[0, 1]`` (1 = brightest = densest), shape ``(rows, cols)`` for a
    2D view or ``(frames, rows, cols)`` for a tomosynthesis volume. Orientation is as stored;
    :mod:`biocnn.mammo.preprocess` flips right breasts and crops.
    """

    path: Path
    pixels: np.ndarray
    laterality: str  # "L" or "R"
    view: str  # "CC", "MLO" or the file's ViewPosition when it is neither
    patient_id: str = ""
    study_id: str = ""  # StudyInstanceUID
    series_id: str = ""  # SeriesInstanceUID
    sop_id: str = ""  # SOPInstanceUID
    intent: str = ""  # PresentationIntentType: FOR PRESENTATION / FOR PROCESSING
    photometric: str = ""
    bits_stored: int = 0
    transfer_syntax: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def is_volume(self) -> bool:
        return self.pixels.ndim == 3


def _text(ds, keyword: str) -> str:
    value = ds.get(keyword, "")
    if value is None:
        return ""
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        value = value[0] if len(value) else ""
    return str(value).strip()


def _frame_laterality(ds) -> str:
    """FrameLaterality from the shared/per-frame functional groups (enhanced/tomosynthesis)."""
    for seq_name in ("SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence"):
        seq = ds.get(seq_name)
        if not seq:
            continue
        anatomy = seq[0].get("FrameAnatomySequence")
        if anatomy:
            lat = _text(anatomy[0], "FrameLaterality")
            if lat:
                return lat
    return ""


def laterality_of(ds) -> str:
    """'L' or 'R' from ImageLaterality, Laterality or FrameLaterality; '' when absent."""
    for lat in (_text(ds, "ImageLaterality"), _text(ds, "Laterality"), _frame_laterality(ds)):
        lat = lat.upper()
        if lat in ("L", "R", "B", "U"):
            return lat
    return ""


def view_of(ds) -> str:
    """'CC' or 'MLO' (variants folded in), the raw ViewPosition otherwise, '' when absent."""
    raw = _text(ds, "ViewPosition").upper().replace(" ", "")
    if raw in CC_VIEWS:
        return "CC"
    if raw in MLO_VIEWS:
        return "MLO"
    if raw:
        return raw
    codes = ds.get("ViewCodeSequence")
    if codes:
        code = _text(codes[0], "CodeValue")
        if code in VIEW_CODES:
            return VIEW_CODES[code]
        meaning = _text(codes[0], "CodeMeaning").lower()
        if "cranio" in meaning:
            return "CC"
        if "oblique" in meaning or "lateral" in meaning:
            return "MLO"
    return ""


def _check_pixel_length(ds, path: Path) -> None:
    """Native (uncompressed) pixel data must hold rows x cols x frames x samples values."""
    if ds.file_meta.get("TransferSyntaxUID") is None or ds.file_meta.TransferSyntaxUID.is_compressed:
        return
    rows, cols = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
    if rows == 0 or cols == 0:
        raise InputError(path, "unsupported: Rows or Columns is missing or zero")
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    bits = int(ds.get("BitsAllocated", 16) or 16)
    expected = math.ceil(rows * cols * frames * samples * bits / 8)
    actual = len(ds.PixelData)
    if actual < expected:
        raise InputError(
            path,
            f"truncated: pixel data has {actual} bytes, {expected} expected "
            f"({rows}x{cols}x{frames} frames, {bits} bits)",
        )


def _decode(ds, path: Path) -> np.ndarray:
    """Decode the pixel data with pydicom's plugins; a clear reason when none can."""
    syntax = ds.file_meta.get("TransferSyntaxUID")
    name = getattr(syntax, "name", str(syntax))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return ds.pixel_array
    except NotImplementedError as exc:
        raise InputError(path, f"unsupported transfer syntax {name}: {str(exc).splitlines()[0]}") from None
    except RuntimeError as exc:
        # pydicom raises RuntimeError when no installed plugin can decode the syntax.
        msg = str(exc).splitlines()[0]
        if "plugin" in msg.lower() or "decod" in msg.lower() or "missing" in msg.lower():
            raise InputError(path, f"no decoder for transfer syntax {name}: {msg}") from None
        raise InputError(path, f"cannot decode pixel data ({name}): {msg}") from None
    except (ValueError, KeyError, AttributeError, TypeError, IndexError, OSError, EOFError) as exc:
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        kind = "truncated" if "truncat" in msg.lower() or "length" in msg.lower() else "cannot decode pixel data"
        raise InputError(path, f"{kind} ({name}): {msg}") from None


def _first(value) -> float:
    """The first of a multi-valued number (several windows: the first is the default)."""
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        value = value[0]
    return float(value)


def _apply_voi_window(x: np.ndarray, center: float, width: float, function: str) -> np.ndarray:
    """WindowCenter/WindowWidth to ``[0, 1]`` (PS3.3 C.11.2.1.2)."""
    function = function.upper() or "LINEAR"
    if function == "SIGMOID":
        return 1.0 / (1.0 + np.exp(-4.0 * (x - center) / max(width, 1e-6)))
    if function == "LINEAR_EXACT":
        return np.clip((x - (center - width / 2.0)) / max(width, 1e-6), 0.0, 1.0)
    # LINEAR: the standard's off-by-one-half form, width >= 1.
    if width <= 1.0:
        return (x > center - 0.5).astype(np.float32)
    return np.clip((x - (center - 0.5)) / (width - 1.0) + 0.5, 0.0, 1.0)


def _robust_window(x: np.ndarray) -> np.ndarray:
    """Percentile window for images without VOI: background excluded where possible."""
    sample = x[:: max(1, x.shape[0] // 512), :: max(1, x.shape[-1] // 512)] if x.ndim == 2 else x[::4, ::4, ::4]
    lo, hi = np.percentile(sample, [0.5, 99.5])
    if hi <= lo:
        hi = lo + 1.0
    return np.clip((x - lo) / (hi - lo), 0.0, 1.0)


def to_intensity(ds, stored: np.ndarray) -> np.ndarray:
    """Stored values -> float32 display grey values in ``[0, 1]`` (bright = dense).

    Applies the modality LUT (rescale), the VOI LUT or window, and the MONOCHROME1 inversion.
    """
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    photometric = _text(ds, "PhotometricInterpretation").upper()
    x = apply_modality_lut(stored, ds).astype(np.float32, copy=False)
    voi_seq = ds.get("VOILUTSequence")
    centers, widths = ds.get("WindowCenter"), ds.get("WindowWidth")
    if voi_seq:
        # A VOI LUT maps modality values through a table; its output range is 2**bits entries.
        descriptor = voi_seq[0].LUTDescriptor
        out_bits = int(descriptor[2]) or 16
        # The table is indexed by integer modality values.
        lut_out = apply_voi_lut(np.rint(x).astype(np.int64), ds, index=0, prefer_lut=True).astype(np.float32)
        y = np.clip(lut_out / float(2**out_bits - 1), 0.0, 1.0)
    elif centers is not None and widths is not None:
        center, width = _first(centers), _first(widths)
        y = _apply_voi_window(x, center, width, _text(ds, "VOILUTFunction"))
    else:
        y = _robust_window(x)
    if photometric == "MONOCHROME1":
        y = 1.0 - y
    return np.ascontiguousarray(y, dtype=np.float32)


def read_dataset(path: str | Path, stop_before_pixels: bool = False):
    """``pydicom.dcmread`` with a one-line reason for files that are not DICOM or are damaged."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    path = Path(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return pydicom.dcmread(path, stop_before_pixels=stop_before_pixels)
    except InvalidDicomError:
        raise InputError(path, "not a DICOM file (no 'DICM' prefix and no recognisable header)") from None
    except (
        EOFError,
        OSError,
        ValueError,
        KeyError,
        TypeError,
        AttributeError,
        IndexError,
        NotImplementedError,
        OverflowError,
        UnicodeError,
    ) as exc:
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise InputError(path, f"unreadable DICOM: {msg}") from None


def check_mammogram(ds, path: Path) -> None:
    """Raise :class:`InputError` unless ``ds`` is an MG image with usable pixel data."""
    modality = _text(ds, "Modality").upper()
    sop_class = str(ds.get("SOPClassUID", ""))
    if not modality and not sop_class:
        raise InputError(path, "not a mammogram: no Modality and no SOP Class UID (damaged or truncated header?)")
    # Modality decides; only a file without one is accepted on its SOP class alone.
    if modality != "MG" and (modality or sop_class not in MG_SOP_CLASSES):
        raise InputError(path, f"not a mammogram (Modality {modality or 'missing'})")
    if "PixelData" not in ds:
        if "FloatPixelData" in ds or "DoubleFloatPixelData" in ds:
            raise InputError(path, "unsupported: float pixel data")
        raise InputError(path, "no pixel data")
    photometric = _text(ds, "PhotometricInterpretation").upper()
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise InputError(
            path,
            f"unsupported photometric interpretation {photometric or 'missing'} "
            "(mammograms are MONOCHROME1 or MONOCHROME2)",
        )
    if int(ds.get("SamplesPerPixel", 1) or 1) != 1:
        raise InputError(path, "unsupported: more than one sample per pixel")
    if ds.file_meta.get("TransferSyntaxUID") is None:
        raise InputError(path, "unreadable DICOM: no TransferSyntaxUID in the file meta information")


def read_mammogram(path: str | Path, allow_volume: bool = True) -> Mammogram:
    """Read one MG DICOM file (2D view or tomosynthesis volume); see the module docstring.

    Raises:
        InputError: the file cannot be used as a mammogram; the message gives the reason.
    """
    path = Path(path)
    ds = read_dataset(path)
    try:
        return _read(ds, path, allow_volume)
    except (ValueError, TypeError, KeyError, AttributeError, IndexError, OverflowError) as exc:
        # pydicom parses values lazily: a malformed element surfaces here, not in dcmread.
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise InputError(path, f"malformed DICOM element: {msg}") from None


def _read(ds, path: Path, allow_volume: bool) -> Mammogram:
    check_mammogram(ds, path)
    laterality = laterality_of(ds)
    if laterality not in ("L", "R"):
        raise InputError(
            path,
            "no laterality (ImageLaterality, Laterality and FrameLaterality are missing)"
            if not laterality
            else f"unsupported laterality {laterality!r} (need L or R)",
        )
    _check_pixel_length(ds, path)
    stored = _decode(ds, path)
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if stored.ndim == 3 and frames == 1:
        raise InputError(path, f"unsupported pixel array shape {stored.shape}")
    if stored.ndim == 3 and not allow_volume:
        raise InputError(path, f"a {frames}-frame volume, but a 2D image is needed")
    if stored.ndim not in (2, 3) or min(stored.shape[-2:]) < 8:
        raise InputError(path, f"unsupported: image of shape {stored.shape} is too small")
    try:
        pixels = to_intensity(ds, stored)
    except (ValueError, KeyError, AttributeError, TypeError, IndexError) as exc:
        raise InputError(path, f"bad rescale/VOI attributes: {str(exc).splitlines()[0]}") from None
    if not np.isfinite(pixels).all():
        raise InputError(path, "pixel values are not finite after rescale/VOI")
    syntax = ds.file_meta.get("TransferSyntaxUID")
    return Mammogram(
        path=path,
        pixels=pixels,
        laterality=laterality,
        view=view_of(ds),
        patient_id=_text(ds, "PatientID"),
        study_id=_text(ds, "StudyInstanceUID"),
        series_id=_text(ds, "SeriesInstanceUID"),
        sop_id=_text(ds, "SOPInstanceUID"),
        intent=_text(ds, "PresentationIntentType"),
        photometric=_text(ds, "PhotometricInterpretation"),
        bits_stored=int(ds.get("BitsStored", 0) or 0),
        transfer_syntax=getattr(syntax, "name", str(syntax)),
    )
