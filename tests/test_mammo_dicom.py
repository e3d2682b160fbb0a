"""DICOM ingest for mammography: grey values, laterality/view, flipping, cropping, compression,
tomosynthesis, and a reason for every file that cannot be used."""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_files
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from biocnn.errors import InputError
from biocnn.io.dicom import laterality_of, read_mammogram, view_of
from biocnn.mammo.data import decode_file
from biocnn.mammo.preprocess import preprocess
from biocnn.synthetic import mammo as synth

IDS = {
    "patient_id": "PID1",
    "patient_name": "Doe^Jane",
    "birth_date": "19600101",
    "study_date": "20240101",
    "accession": "A1",
    "study_number": "1",
    "study": "1.2.3.4",
    "frame_of_reference": "1.2.3.5",
    "sop": "1.2.3.6",
    "series": "1.2.3.7",
    "series_number": 1,
}


def ramp_image(rows: int = 96, cols: int = 64) -> np.ndarray:
    """A breast-like half disc on a black background, values rising left to right."""
    yy, xx = np.mgrid[0:rows, 0:cols]
    disc = ((yy - rows / 2) / (0.4 * rows)) ** 2 + (xx / (0.8 * cols)) ** 2 < 1
    return np.where(disc, 0.2 + 0.6 * xx / cols, 0.0).astype(np.float32)


def write(
    tmp_path: Path,
    name: str,
    stored: np.ndarray,
    attrs: dict,
    bits: int = 12,
    laterality: str = "L",
    view: str = "CC",
    **changes,
) -> Path:
    ds = synth.mg_dataset(stored, attrs, bits, IDS, laterality, view, synth.MG_PRESENTATION)
    for key, value in changes.items():
        if value is None:
            delattr(ds, key)
        else:
            setattr(ds, key, value)
    path = tmp_path / name
    ds.save_as(path, enforce_file_format=True)
    return path


def encoded(img: np.ndarray, style: int, bits: int = 12) -> tuple[np.ndarray, dict]:
    enc = synth.encode_pixels(img, style, bits, np.random.default_rng(0))
    return enc["stored"], enc["attrs"]


# --------------------------------------------------------------------------- grey values
def test_monochrome1_and_monochrome2_read_the_same(tmp_path):
    img = ramp_image()
    mono2 = read_mammogram(write(tmp_path, "m2.dcm", *encoded(img, 0)))
    mono1 = read_mammogram(write(tmp_path, "m1.dcm", *encoded(img, 1)))
    assert mono1.photometric == "MONOCHROME1" and mono2.photometric == "MONOCHROME2"
    # Bright is dense in both; the window maps the stored range onto [0, 1].
    np.testing.assert_allclose(mono1.pixels, mono2.pixels, atol=2e-3)
    inside = img > 0
    assert np.corrcoef(mono2.pixels[inside], img[inside])[0, 1] > 0.999


def test_window_follows_the_dicom_linear_formula(tmp_path):
    stored = np.arange(0, 4096, 16, dtype=np.uint16).reshape(16, 16)
    path = write(
        tmp_path,
        "w.dcm",
        stored,
        {"PhotometricInterpretation": "MONOCHROME2", "WindowCenter": "2048", "WindowWidth": "1025"},
    )
    px = read_mammogram(path).pixels
    expected = np.clip((stored - (2048 - 0.5)) / 1024 + 0.5, 0, 1)
    np.testing.assert_allclose(px, expected, atol=1e-6)
    assert px.min() == 0 and px.max() == 1


def test_rescale_slope_intercept_applies_before_the_window(tmp_path):
    stored = np.arange(0, 1024, 4, dtype=np.uint16).reshape(16, 16)
    # Modality values = 2 * stored - 100; the window is given in modality units.
    path = write(
        tmp_path,
        "r.dcm",
        stored,
        {
            "PhotometricInterpretation": "MONOCHROME2",
            "RescaleSlope": "2",
            "RescaleIntercept": "-100",
            "WindowCenter": "924",
            "WindowWidth": "2049",
        },
        bits=10,
    )
    px = read_mammogram(path).pixels
    modality = 2.0 * stored - 100
    np.testing.assert_allclose(px, np.clip((modality - 923.5) / 2048 + 0.5, 0, 1), atol=1e-6)


def test_voi_lut_sequence_is_used(tmp_path):
    img = ramp_image()
    lut_file = read_mammogram(write(tmp_path, "lut.dcm", *encoded(img, 3)))
    window = read_mammogram(write(tmp_path, "win.dcm", *encoded(img, 0)))
    # The LUT is a gamma of 0.8 over the same range: same order, brighter mid-tones.
    inside = img > 0.3
    np.testing.assert_allclose(lut_file.pixels[inside], window.pixels[inside] ** 0.8, atol=3e-3)


def test_for_processing_without_voi_gets_a_robust_window(tmp_path):
    img = ramp_image()
    m = read_mammogram(write(tmp_path, "proc.dcm", *encoded(img, 4)))
    assert m.intent == "FOR PROCESSING"
    assert 0 <= m.pixels.min() and m.pixels.max() <= 1
    inside = img > 0
    assert np.corrcoef(m.pixels[inside], img[inside])[0, 1] > 0.99


@pytest.mark.parametrize("bits", [10, 12, 14, 16])
def test_bit_depths_give_the_same_image(tmp_path, bits):
    img = ramp_image()
    m = read_mammogram(write(tmp_path, f"b{bits}.dcm", *encoded(img, 0, bits), bits=bits))
    assert m.bits_stored == bits
    reference = read_mammogram(write(tmp_path, "b16.dcm", *encoded(img, 0, 16), bits=16))
    np.testing.assert_allclose(m.pixels, reference.pixels, atol=4e-3)


# --------------------------------------------------------------------------- laterality / view
def test_laterality_sources_and_view_variants():
    ds = Dataset()
    assert laterality_of(ds) == ""
    ds.Laterality = "R"
    assert laterality_of(ds) == "R"
    ds.ImageLaterality = "L"  # ImageLaterality wins over the series' Laterality
    assert laterality_of(ds) == "L"
    enhanced = Dataset()
    anatomy = Dataset()
    anatomy.FrameLaterality = "R"
    shared = Dataset()
    shared.FrameAnatomySequence = Sequence([anatomy])
    enhanced.SharedFunctionalGroupsSequence = Sequence([shared])
    assert laterality_of(enhanced) == "R"
    for raw, view in (("CC", "CC"), ("XCCL", "CC"), ("FB", "CC"), ("MLO", "MLO"), ("ML", "MLO"), ("LM", "MLO")):
        v = Dataset()
        v.ViewPosition = raw
        assert view_of(v) == view
    coded = Dataset()
    code = Dataset()
    code.CodeValue, code.CodeMeaning = "R-10226", "medio-lateral oblique"
    coded.ViewCodeSequence = Sequence([code])
    assert view_of(coded) == "MLO"


def test_missing_laterality_is_a_failure(tmp_path):
    path = write(tmp_path, "nolat.dcm", *encoded(ramp_image(), 0), ImageLaterality=None, Laterality=None)
    with pytest.raises(InputError, match="no laterality"):
        read_mammogram(path)


def test_right_breast_is_flipped_to_the_canonical_orientation(tmp_path):
    rng = np.random.default_rng(3)
    img, _ = synth.view_image(160, 128, "CC", rng, None)
    left = read_mammogram(write(tmp_path, "l.dcm", *encoded(img, 0), laterality="L"))
    right = read_mammogram(write(tmp_path, "r.dcm", *encoded(img[:, ::-1].copy(), 0), laterality="R"))
    assert right.laterality == "R"
    a, ga = preprocess(left.pixels, "L", (64, 48))
    b, gb = preprocess(right.pixels, "R", (64, 48))
    assert gb.flipped and not ga.flipped
    np.testing.assert_allclose(a, b, atol=2e-3)  # only the stored-value rounding noise differs
    # Chest wall (bright, thick tissue) on the left, background on the right.
    assert a[:, :4].mean() > a[:, -4:].mean()


# --------------------------------------------------------------------------- cropping
def test_breast_is_cropped_and_the_marker_removed(tmp_path):
    rng = np.random.default_rng(5)
    img, _ = synth.view_image(320, 256, "CC", rng, None)
    marker = img > 0.9  # the lead marker the generator puts in the top-right corner
    assert marker[:40, -60:].any()
    m = read_mammogram(write(tmp_path, "c.dcm", *encoded(img, 0)))
    out, geom = preprocess(m.pixels, m.laterality, (128, 96))
    y0, y1, x0, x1 = geom.box
    ys, xs = np.nonzero(synth.breast_shape(320, 256, "CC", np.random.default_rng(5))[0])
    # The box hugs the breast (within the margin), not the whole image.
    assert x1 < 256 and x1 == pytest.approx(xs.max(), abs=12)
    assert y0 == pytest.approx(ys.min(), abs=12) and y1 == pytest.approx(ys.max(), abs=12)
    carried = geom.apply(marker.astype(np.float32))
    assert carried.max() < 0.5 or out[carried > 0.5].max() == 0  # marker zeroed or outside the crop
    assert out.shape == (128, 96)
    # Aspect ratio kept: the resized crop fills one dimension and is centred in the other.
    h, w = y1 - y0, x1 - x0
    assert geom.scale == pytest.approx(min(128 / h, 96 / w))


def test_blank_image_is_a_failure(tmp_path):
    path = write(
        tmp_path,
        "blank.dcm",
        np.zeros((64, 64), np.uint16),
        {"PhotometricInterpretation": "MONOCHROME2", "WindowCenter": "100", "WindowWidth": "200"},
    )
    d = decode_file(path, (64, 48), None, 2)
    assert d.image is None and "no breast tissue" in d.reason


# --------------------------------------------------------------------------- compression
@pytest.mark.parametrize("syntax", ["rle", "j2k"])
def test_compressed_synthetic_files_match_native(tmp_path, syntax):
    rng = np.random.default_rng(1)
    img, _ = synth.view_image(128, 96, "MLO", rng, synth.random_lesion(rng))
    stored, attrs = encoded(img, 0, 14)
    native = read_mammogram(write(tmp_path, "n.dcm", stored, attrs, bits=14))
    ds = synth.mg_dataset(stored, attrs, 14, IDS, "L", "MLO", synth.MG_PRESENTATION)
    synth._write_dataset(ds, tmp_path / "c.dcm", syntax)
    packed = read_mammogram(tmp_path / "c.dcm")
    assert packed.transfer_syntax != native.transfer_syntax
    np.testing.assert_array_equal(packed.pixels, native.pixels)


def _testdata(name: str) -> Path:
    found = [Path(f) for f in get_testdata_files() if Path(f).name == name]
    if not found:
        pytest.fail(f"pydicom test file {name} missing")
    return found[0]


def _as_mg(src: Path, dst: Path) -> Path:
    ds = pydicom.dcmread(src)
    ds.Modality = "MG"
    ds.ImageLaterality = "L"
    ds.save_as(dst)
    return dst


@pytest.mark.parametrize("name", ["MR_small_RLE.dcm", "MR_small_jp2klossless.dcm", "MR_small_jpeg_ls_lossless.dcm"])
def test_pydicom_compressed_files_decode_like_the_uncompressed_one(tmp_path, name):
    reference = read_mammogram(_as_mg(_testdata("MR_small.dcm"), tmp_path / "ref.dcm"))
    other = read_mammogram(_as_mg(_testdata(name), tmp_path / name))
    np.testing.assert_array_equal(other.pixels, reference.pixels)


def test_jpeg_baseline_is_decoded(tmp_path):
    from PIL import Image
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEGBaseline8Bit

    img = ramp_image(128, 96)
    grey = (img * 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(grey).save(buf, format="JPEG", quality=95)
    ds = synth.mg_dataset(
        grey.astype(np.uint16),
        {"PhotometricInterpretation": "MONOCHROME2", "WindowCenter": "127.5", "WindowWidth": "256"},
        8,
        IDS,
        "R",
        "CC",
        synth.MG_PRESENTATION,
    )
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds.PixelData = encapsulate([buf.getvalue()])
    ds["PixelData"].VR = "OB"
    ds.save_as(tmp_path / "jpeg.dcm", enforce_file_format=True)
    m = read_mammogram(tmp_path / "jpeg.dcm")
    assert "Baseline" in m.transfer_syntax and m.laterality == "R"
    np.testing.assert_allclose(m.pixels, (grey.astype(np.float32) - 127) / 255 + 0.5, atol=0.05)


def test_undecodable_syntax_gets_a_clear_reason(tmp_path):
    # pydicom's JPEG-lossy.dcm is a 12-bit JPEG Extended file none of the plugins can decode.
    d = decode_file(_as_mg(_testdata("JPEG-lossy.dcm"), tmp_path / "lossy.dcm"), (64, 48), None, 2)
    assert d.image is None
    assert "JPEG Extended" in d.reason and ("decod" in d.reason)


# --------------------------------------------------------------------------- tomosynthesis
def test_tomosynthesis_volume_reads_as_3d(tmp_path):
    rng = np.random.default_rng(2)
    ids = dict(IDS, exam="exam-0000")
    path, mask = synth.write_tomo(tmp_path, ids, "R", "CC", 96, 64, 6, synth.random_lesion(rng), rng)
    m = read_mammogram(path)
    assert m.is_volume and m.pixels.shape == (6, 96, 64)
    assert m.laterality == "R" and m.view == "CC"  # FrameLaterality, ViewCodeSequence
    vol, geom = preprocess(m.pixels, m.laterality, (64, 48), depth=4)
    assert vol.shape == (4, 64, 48) and geom.flipped
    assert decode_file(path, (64, 48), None, 2).reason.startswith("a 6-frame volume")


# --------------------------------------------------------------------------- failures
def test_failure_reasons(tmp_path):
    good = write(tmp_path, "good.dcm", *encoded(ramp_image(), 0))
    ds = pydicom.dcmread(good)
    ds.Modality = "CT"
    ds.save_as(tmp_path / "ct.dcm")
    ds = pydicom.dcmread(good)
    del ds.PixelData
    ds.save_as(tmp_path / "nopix.dcm")
    ds = pydicom.dcmread(good)
    ds.PhotometricInterpretation = "RGB"
    ds.save_as(tmp_path / "rgb.dcm")
    data = good.read_bytes()
    (tmp_path / "trunc.dcm").write_bytes(data[: len(data) - 2000])
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "cut.dcm").write_bytes(data[:200])
    expected = {
        "ct.dcm": "not a mammogram (Modality CT)",
        "nopix.dcm": "no pixel data",
        "rgb.dcm": "unsupported photometric interpretation RGB",
        "trunc.dcm": "truncated",
        "notes.txt": "not a DICOM file",
        "cut.dcm": "no Modality and no SOP Class UID",
    }
    for name, reason in expected.items():
        d = decode_file(tmp_path / name, (64, 48), None, 2)
        assert d.image is None and reason in d.reason, (name, d.reason)
    assert decode_file(good, (64, 48), None, 2).image is not None


def test_every_pydicom_test_file_is_read_or_has_a_reason(tmp_path):
    """The ~190 files shipped with pydicom, as they are and relabelled as MG (which sends the
    ones with pixel data through every decoder): none may raise."""
    files = [Path(f) for f in get_testdata_files()]
    assert len(files) > 150
    outcomes = {"read": 0, "failed": 0}
    relabelled = 0
    for f in files:
        candidates = [f]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                ds = pydicom.dcmread(f)
                if "PixelData" in ds and ds.get("Rows", 0) and ds.get("Rows") * ds.get("Columns", 0) < 4e6:
                    ds.Modality = "MG"
                    ds.ImageLaterality = "L"
                    out = tmp_path / f"mg_{f.name}"
                    ds.save_as(out)
                    candidates.append(out)
                    relabelled += 1
            except Exception:  # noqa: BLE001 - files pydicom itself cannot re-save stay as they are
                pass
        for path in candidates:
            d = decode_file(path, (64, 48), None, 2)
            if d.image is None:
                assert d.reason and not d.reason.startswith("unexpected"), (path.name, d.reason)
                outcomes["failed"] += 1
            else:
                assert d.image.shape == (64, 48) and np.isfinite(d.image).all()
                outcomes["read"] += 1
    assert relabelled > 50
    assert outcomes["read"] > 20 and outcomes["failed"] > len(files) // 2
