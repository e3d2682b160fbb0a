"""Segmentation loaders: real PNG/TIFF/NIfTI files, and the errors they must raise."""

from __future__ import annotations

import logging

import nibabel as nib
import numpy as np
import pytest
import tifffile
from PIL import Image

from biocnn.errors import InputError
from biocnn.io.images import read_image, read_label
from biocnn.io.nifti import read_volume, save_like
from biocnn.segment.config import DataConfig
from biocnn.segment.data import (
    find_cases,
    index_to_label,
    label_to_index,
    load_case,
    preprocessing,
    read_case_2d,
    read_case_3d,
)
from biocnn.synthetic.malaria import write_malaria
from biocnn.synthetic.tumor import MODALITIES, write_tumor

MODS = list(MODALITIES)


def _cfg3d(tmp_path, **kw):
    return DataConfig(
        train=str(tmp_path),
        spatial_dims=3,
        in_channels=4,
        modalities=MODS,
        label_values=[0, 1, 2, 4],
        patch_size=[16, 16, 16],
        **kw,
    )


def test_synth_malaria_png_and_tiff_read_the_same(tmp_path):
    write_malaria(tmp_path / "png", 2, seed=3, size=64)
    write_malaria(tmp_path / "tif", 2, seed=3, size=64, fmt="tif")
    cases = find_cases(tmp_path / "png", 2, require_labels=True)
    assert [c.id for c in cases] == ["field_000", "field_001"]
    a = read_image(tmp_path / "png" / "images" / "field_000.png")
    b = read_image(tmp_path / "tif" / "images" / "field_000.tif")
    assert a.shape == (3, 64, 64) and a.dtype == np.float32
    assert tifffile.imread(tmp_path / "tif" / "images" / "field_000.tif").dtype == np.uint16
    np.testing.assert_allclose(a, b, atol=1e-6)
    label = read_label(cases[0].label)
    assert set(np.unique(label)) <= {0, 1} and label.any()
    # Same seed, same data.
    write_malaria(tmp_path / "again", 2, seed=3, size=64)
    np.testing.assert_array_equal(read_image(tmp_path / "again" / "images" / "field_000.png"), a)


def test_grayscale_16bit_into_rgb_model_and_channel_mismatch(tmp_path):
    gray = (np.arange(32 * 32).reshape(32, 32) * 60).astype(np.uint16)
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    Image.fromarray(gray).save(tmp_path / "images" / "g.png")
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(tmp_path / "labels" / "g.png")
    case = find_cases(tmp_path, 2)[0]
    image, label = read_case_2d(case, in_channels=3)
    assert image.shape == (3, 32, 32)
    np.testing.assert_allclose(image[0], gray / 65535.0, atol=1e-6)
    with pytest.raises(InputError, match="2 channel|model expects 2"):
        read_case_2d(case, in_channels=2)


def test_2d_label_shape_mismatch_and_unknown_values(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(tmp_path / "images" / "a.png")
    Image.fromarray(np.zeros((20, 21), np.uint8)).save(tmp_path / "labels" / "a.png")
    case = find_cases(tmp_path, 2)[0]
    with pytest.raises(InputError, match="a.png: case a: label shape"):
        read_case_2d(case, 3)
    with pytest.raises(InputError, match=r"case a: unknown label values \[7\]"):
        label_to_index(np.array([[0, 7]]), [0, 1], "a", tmp_path / "labels" / "a.png")
    np.testing.assert_array_equal(
        index_to_label(label_to_index(np.array([0, 4, 2]), [0, 1, 2, 4], "x", tmp_path), [0, 1, 2, 4]), [0, 4, 2]
    )


def test_corrupt_and_wrong_dimension_files(tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    with pytest.raises(InputError, match="bad.png: cannot read image"):
        read_image(bad)
    write_tumor(tmp_path / "vol", 1, seed=0, shape=(12, 12, 12))
    # A NIfTI volume given to a 2D model, a PNG given to a 3D model.
    with pytest.raises(InputError, match="NIfTI volume but the model is 2D"):
        find_cases(tmp_path / "vol" / "case_000" / "case_000_t1.nii.gz", 2)
    with pytest.raises(InputError, match="2D image but the model is 3D"):
        find_cases(bad, 3, MODS)


def test_synth_tumor_reads_with_checks(tmp_path):
    write_tumor(tmp_path, 2, seed=1, shape=(16, 16, 16))
    cases = find_cases(tmp_path, 3, MODS, require_labels=True)
    assert [c.id for c in cases] == ["case_000", "case_001"]
    image, label, ref = read_case_3d(cases[0], 4)
    assert image.shape == (4, 16, 16, 16)
    assert set(np.unique(label)) == {0, 1, 2, 4}
    assert ref.affine[0, 0] == -1  # LPS-like on disk
    item = load_case(preprocessing(_cfg3d(tmp_path)), cases[0])
    assert tuple(item["image"].shape) == (4, 16, 16, 16)
    assert item["image"].affine[0, 0] > 0  # re-oriented to RAS by MONAI
    assert set(np.unique(item["label"].numpy())) == {0, 1, 2, 3}  # class indices


def _write(path, data, affine=None):
    nib.save(nib.Nifti1Image(data, np.eye(4) if affine is None else affine), str(path))


def test_3d_errors_name_the_case(tmp_path):
    write_tumor(tmp_path, 1, seed=2, shape=(12, 12, 12))
    d = tmp_path / "case_000"
    case = find_cases(tmp_path, 3, MODS)[0]
    t2 = d / "case_000_t2.nii.gz"
    data, img = read_volume(t2)
    # Shape mismatch between modalities.
    _write(t2, data[:, :, :10], img.affine)
    with pytest.raises(InputError, match="case_000_t2.nii.gz: case case_000: shape"):
        read_case_3d(case, 4)
    # Affine mismatch.
    shifted = img.affine.copy()
    shifted[0, 3] += 5
    _write(t2, data, shifted)
    with pytest.raises(InputError, match="case case_000: affine differs"):
        read_case_3d(case, 4)
    # NaN voxels.
    data[0, 0, 0] = np.nan
    _write(t2, data, img.affine)
    with pytest.raises(InputError, match="case_000_t2.nii.gz: 1 NaN/Inf voxels"):
        read_case_3d(case, 4)
    data[0, 0, 0] = 0
    _write(t2, data, img.affine)
    # A missing modality.
    (d / "case_000_flair.nii.gz").unlink()
    with pytest.raises(InputError, match="case_000: missing modality file"):
        find_cases(tmp_path, 3, MODS)


def test_3d_label_checks_and_empty_label_warning(tmp_path, caplog):
    write_tumor(tmp_path, 1, seed=2, shape=(12, 12, 12))
    seg = tmp_path / "case_000" / "case_000_seg.nii.gz"
    label, img = read_volume(seg)
    _write(seg, label[:, :, :11].astype(np.uint8), img.affine)
    case = find_cases(tmp_path, 3, MODS)[0]
    with pytest.raises(InputError, match="case_000_seg.nii.gz: case case_000: label shape"):
        read_case_3d(case, 4)
    bad = label.astype(np.uint8)
    bad[0, 0, 0] = 3
    _write(seg, bad, img.affine)
    with pytest.raises(InputError, match=r"unknown label values \[3\]"):
        load_case(preprocessing(_cfg3d(tmp_path)), case)
    _write(seg, np.zeros_like(label, dtype=np.uint8), img.affine)
    with caplog.at_level(logging.WARNING):
        load_case(preprocessing(_cfg3d(tmp_path)), case)
    assert "case_000" in caplog.text and "empty" in caplog.text


def test_4d_file_and_save_like_keeps_geometry(tmp_path):
    write_tumor(tmp_path, 1, seed=4, shape=(12, 14, 10))
    d = tmp_path / "case_000"
    vols = [read_volume(d / f"case_000_{m}.nii.gz")[0] for m in MODS]
    ref = nib.load(str(d / "case_000_t1.nii.gz"))
    four = tmp_path / "one" / "one_image.nii.gz"
    four.parent.mkdir()
    save_like(four, np.stack(vols, -1), ref, np.float32)
    cases = find_cases(tmp_path / "one", 3, MODS)
    image, _, ref4 = read_case_3d(cases[0], 4)
    np.testing.assert_allclose(image, np.stack(vols), rtol=1e-6)
    out = nib.load(str(four))
    np.testing.assert_array_equal(out.affine, ref.affine)
    assert out.header.get_zooms()[:3] == ref.header.get_zooms()
    assert int(out.header["qform_code"]) == int(ref.header["qform_code"])
    assert int(out.header["sform_code"]) == int(ref.header["sform_code"])
    assert out.header.get_xyzt_units() == ref.header.get_xyzt_units()


def test_class_ratios_centre_patches_on_the_chosen_classes():
    """data.class_ratios: patch centres drawn per class (MONAI RandCropByLabelClassesd); with all
    weight on a class occupying 4 pixels of a 64x64 label every patch contains it, while the
    foreground/background sampler misses it; a ratio list of the wrong length is refused."""
    import torch

    from biocnn.segment.data import augmentation

    label = np.zeros((1, 64, 64), np.int64)
    label[0, 5:40, 5:40] = 1
    label[0, 50:52, 50:52] = 2  # the rare class
    sample = {"image": torch.rand(3, 64, 64), "label": torch.from_numpy(label)}
    base = dict(
        train="x", spatial_dims=2, in_channels=3, label_values=[0, 1, 2], patch_size=[16, 16], samples_per_image=8
    )
    rare = augmentation(DataConfig(**base, class_ratios=[0, 0, 1]), seed=0)(dict(sample))
    assert all((p["label"] == 2).any() for p in rare)
    posneg = augmentation(DataConfig(**base, pos_fraction=1.0), seed=0)(dict(sample))
    assert not all((p["label"] == 2).any() for p in posneg)
    with pytest.raises(ValueError, match="class_ratios"):
        DataConfig(**base, class_ratios=[1, 1])


@pytest.mark.parametrize("shift", ["noise", "blur", "intensity"])
def test_shifted_sets_from_one_seed_are_the_same_cases(tmp_path, shift):
    """The uncertainty benchmark pairs its OOD sets with the in-distribution one (same seed):
    a shift must change the images, never the cells, tumors or labels drawn."""
    from biocnn.synthetic.malaria import malaria_field
    from biocnn.synthetic.tumor import tumor_volume

    for make, shape in ((malaria_field, 48), (tumor_volume, (16, 16, 16))):
        image, label = make(np.random.default_rng(3), shape)
        shifted, shifted_label = make(np.random.default_rng(3), shape, shift=shift)
        np.testing.assert_array_equal(shifted_label, label)
        assert np.abs(shifted.astype(np.float64) - image).mean() > 1e-3 * np.abs(image).mean()
