"""Real files as they come: nuclei RGBA PNGs, BRATS float label maps, datalists, BraTS regions.

Tiny crops of the real data in ``../shared/data/real`` (nuclei: 2018 Data Science Bowl; BRATS
2015), written to a temporary folder; the tests skip when that folder is absent.
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from biocnn.cli import main
from biocnn.errors import InputError
from biocnn.io.images import read_image
from biocnn.io.nifti import read_label_volume
from biocnn.segment.data import Case, find_cases, read_case_2d, read_case_3d
from biocnn.segment.evaluate import region_dice_hd95

REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "real"
SPLITS = Path(__file__).resolve().parents[1] / "data" / "real"
pytestmark = pytest.mark.skipif(not (REAL / "nuclei").is_dir(), reason=f"real data not at {REAL} (shared data absent)")

BRATS_VALUES = [0, 1, 2, 3, 4]
REGIONS = {"WT": [1, 2, 3, 4], "TC": [1, 3, 4], "ET": [4]}
BACKGROUND = 4  # slices of background (the volume's minimum) in front of each BRATS crop


@pytest.fixture(autouse=True)
def _one_thread():
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)  # shared cores: OpenMP spinning slows tiny models badly
    yield
    torch.set_num_threads(n)


def _nuclei_entries(n: int) -> list[dict[str, str]]:
    """The first ``n`` training entries of the fixed split, as absolute paths."""
    entries = json.loads((SPLITS / "nuclei.json").read_text())["training"][:n]
    return [{k: str((SPLITS / v).resolve()) for k, v in e.items()} for e in entries]


def _crop_2d(arr: np.ndarray, label: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """A ``size`` x ``size`` crop centred on the label's foreground."""
    ys, xs = np.nonzero(label)
    y = int(np.clip(ys.mean() - size // 2, 0, label.shape[0] - size))
    x = int(np.clip(xs.mean() - size // 2, 0, label.shape[1] - size))
    return arr[y : y + size, x : x + size], label[y : y + size, x : x + size]


@pytest.fixture(scope="module")
def nuclei(tmp_path_factory) -> Path:
    """Six 40 x 40 crops of real nuclei images, kept RGBA (constant alpha) as published, in
    ``files/``, with a datalist in ``lists/`` naming them by relative paths (4 training, 2 test)."""
    root = tmp_path_factory.mktemp("nuclei")
    (root / "files").mkdir()
    (root / "lists").mkdir()
    entries = []
    for i, e in enumerate(_nuclei_entries(6)):
        rgba = np.asarray(Image.open(e["image"]))
        label = np.asarray(Image.open(e["label"]))
        assert rgba.shape[-1] == 4 and (rgba[..., 3] == 255).all()  # what the published files are
        crop, lab = _crop_2d(rgba, label, 40)
        Image.fromarray(np.ascontiguousarray(crop)).save(root / "files" / f"n{i}.png")
        Image.fromarray(np.ascontiguousarray(lab)).save(root / "files" / f"n{i}_mask.png")
        entries.append({"image": f"../files/n{i}.png", "label": f"../files/n{i}_mask.png"})
    (root / "lists" / "nuclei.json").write_text(json.dumps({"training": entries[:4], "test": entries[4:]}))
    return root


def _brats_case() -> Path:
    test = json.loads((SPLITS / "brats.json").read_text())["test"][0]
    return (SPLITS / test["label"]).resolve().parent


@pytest.fixture(scope="module")
def brats(tmp_path_factory) -> Path:
    """Three 20^3 crops of one real BRATS case (FLAIR, T1c and the float32 label map) around its
    tumour, each with 4 slices of the case's own background (outside the head) in front, each in
    its own folder with BRATS' file names, and a datalist (2 training, 1 test)."""
    root = tmp_path_factory.mktemp("brats")
    case = _brats_case()
    label_img = nib.load(str(case / "OTMultiClass.nii.gz"))
    label = np.asarray(label_img.dataobj)
    assert label.dtype == np.float32
    vols = {
        m: np.asarray(nib.load(str(case / f"{m}.nii.gz")).dataobj)
        for m in ("Flair_subtrMeanDivStd", "T1c_subtrMeanDivStd")
    }
    centre = np.argwhere(label == 4).mean(0).astype(int)
    entries = []
    for i, shift in enumerate((-6, 0, 6)):
        lo = centre - 10 + shift
        box = tuple(slice(a, a + 20) for a in lo)
        folder = root / f"case{i}"
        folder.mkdir()
        for name, vol in vols.items():
            crop = np.pad(vol[box], ((BACKGROUND, 0), (0, 0), (0, 0)), constant_values=vol.min())
            nib.save(nib.Nifti1Image(crop, label_img.affine), str(folder / f"{name}.nii.gz"))
        crop = np.pad(label[box], ((BACKGROUND, 0), (0, 0), (0, 0)))
        nib.save(nib.Nifti1Image(crop, label_img.affine), str(folder / "OTMultiClass.nii.gz"))
        entries.append(
            {
                "image": [f"case{i}/Flair_subtrMeanDivStd.nii.gz", f"case{i}/T1c_subtrMeanDivStd.nii.gz"],
                "label": f"case{i}/OTMultiClass.nii.gz",
            }
        )
    (root / "brats.json").write_text(json.dumps({"training": entries[:2], "test": entries[2:]}))
    return root


# ----------------------------------------------------------------------------- files as they come
def test_constant_alpha_is_dropped_and_varying_alpha_is_an_error(nuclei, tmp_path):
    path = nuclei / "files" / "n0.png"
    rgba = np.asarray(Image.open(path))
    image = read_image(path)
    assert image.shape == (3, 40, 40)  # alpha dropped
    np.testing.assert_allclose(image[0], rgba[..., 0] / 255.0, atol=1e-7)
    # A 1-channel model gets the grey value itself (R = G = B in these files).
    grey, _ = read_case_2d(Case("n0", [path]), in_channels=1)
    assert grey.shape == (1, 40, 40)
    np.testing.assert_array_equal(grey[0], image[0])
    # A colour image into a 1-channel model: its luma (ITU-R BT.601, as PIL's "L").
    colour = rgba.copy()
    colour[..., 1] //= 2
    Image.fromarray(colour).save(tmp_path / "colour.png")
    luma, _ = read_case_2d(Case("c", [tmp_path / "colour.png"]), in_channels=1)
    expected = np.asarray(Image.fromarray(colour[..., :3]).convert("L"), np.float32) / 255.0
    np.testing.assert_allclose(luma[0], expected, atol=1 / 255 + 1e-6)
    # Transparency that varies is not silently thrown away.
    varying = rgba.copy()
    varying[:5, :, 3] = 0
    Image.fromarray(varying).save(tmp_path / "holes.png")
    with pytest.raises(InputError, match=r"holes.png: alpha \(transparency\) channel varies"):
        read_image(tmp_path / "holes.png")


def test_integer_valued_float_labels_are_read_and_fractions_are_an_error(brats, tmp_path):
    folder = brats / "case1"
    label, img = read_label_volume(folder / "OTMultiClass.nii.gz")
    stored = np.asarray(nib.load(str(folder / "OTMultiClass.nii.gz")).dataobj)
    assert stored.dtype == np.float32 and label.dtype == np.int64
    np.testing.assert_array_equal(label, stored)
    assert set(np.unique(label)) <= set(BRATS_VALUES) and (label == 4).any()
    images = [folder / "Flair_subtrMeanDivStd.nii.gz", folder / "T1c_subtrMeanDivStd.nii.gz"]
    image, read, _ = read_case_3d(Case("case1", images, folder / "OTMultiClass.nii.gz"), in_channels=2)
    assert image.shape == (2, 20 + BACKGROUND, 20, 20)
    np.testing.assert_array_equal(read, label)
    # One voxel at 2.5 (a resampled label map, say): an error naming the file, not a silent 2.
    bad = stored.copy()
    bad[3, 4, 5] = 2.5
    nib.save(nib.Nifti1Image(bad, img.affine), str(tmp_path / "half.nii.gz"))
    with pytest.raises(InputError, match=r"half.nii.gz: label map holds 1 non-integer values \(e.g. 2.5\)"):
        read_case_3d(Case("x", images, tmp_path / "half.nii.gz"), in_channels=2)


# ----------------------------------------------------------------------------- datalists
def test_the_fixed_splits_are_datalists_biocnn_reads():
    train = find_cases(SPLITS / "nuclei.json", 2, require_labels=True, datalist_key="training")
    test = find_cases(SPLITS / "nuclei.json", 2, require_labels=True)
    assert (len(train), len(test)) == (240, 60)
    assert not {c.id for c in train} & {c.id for c in test}
    brats = find_cases(SPLITS / "brats.json", 3, require_labels=True, datalist_key="training")
    # BRATS' files have the same names in every case: the cases are named by their folders.
    assert [c.id for c in brats] == ["brats_2013_pat0004_1", "brats_2013_pat0005_1", "brats_2013_pat0006_1"]
    assert [p.name for p in brats[0].images] == ["Flair_subtrMeanDivStd.nii.gz", "T1c_subtrMeanDivStd.nii.gz"]
    assert brats[0].label.name == "OTMultiClass.nii.gz"


NUCLEI_CFG = """
data: {{train: {train}, spatial_dims: 2, in_channels: 1, normalize: image, label_values: [0, 1],
        patch_size: [32, 32], samples_per_image: 2}}
model: {{channels: [4, 8], decoder_dropout: [0.3]}}
train: {{epochs: 1, batch_size: 2, progress: false, early_stopping: {{monitor: val_dice, mode: max}}}}
inference: {{roi_size: [32, 32], mc_samples: 2, mc_batch: 2}}
"""

BRATS_CFG = """
data: {{train: {train}, spatial_dims: 3, in_channels: 2, modalities: [flair, t1c], label_values: [0, 1, 2, 3, 4],
        regions: {{WT: [1, 2, 3, 4], TC: [1, 3, 4], ET: [4]}}, normalize: none, crop_foreground: true,
        patch_size: [16, 16, 16], samples_per_image: 1}}
model: {{channels: [4, 8], norm: instance, decoder_dropout: [0.3]}}
train: {{epochs: 1, batch_size: 1, progress: false, early_stopping: {{monitor: val_dice, mode: max}}}}
inference: {{roi_size: [16, 16, 16], mc_samples: 2, mc_batch: 2}}
"""


def _one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    return lines[0]


def _train_predict_evaluate(tmp_path, datalist: Path, cfg_text: str) -> dict:
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(cfg_text.format(train=datalist))
    model, pred, metrics = tmp_path / "model", tmp_path / "pred", tmp_path / "metrics.json"
    assert main(["segment", "train", "--config", str(cfg), "--out", str(model)]) == 0
    assert main(["segment", "predict", "--model", str(model), "--input", str(datalist), "--out", str(pred)]) == 0
    assert main(["segment", "evaluate", "--pred", str(pred), "--labels", str(datalist), "--out", str(metrics)]) == 0
    return json.loads(metrics.read_text())


def test_2d_datalist_train_predict_evaluate_from_the_command_line(nuclei, tmp_path, capsys):
    datalist = nuclei / "lists" / "nuclei.json"
    metrics = _train_predict_evaluate(tmp_path, datalist, NUCLEI_CFG)
    config = json.loads((tmp_path / "model" / "config.json").read_text())
    assert sorted(config["train_cases"] + config["val_cases"]) == ["n0", "n1", "n2", "n3"]  # the training list
    assert [c["case"] for c in metrics["per_case"]] == ["n4", "n5"]  # the test list
    assert "class 1" in capsys.readouterr().out  # the table
    # A missing file names the datalist, the entry and the path; a missing list names the key.
    broken = json.loads(datalist.read_text())
    broken["training"][2]["label"] = "../files/gone.png"
    (nuclei / "lists" / "broken.json").write_text(json.dumps(broken))
    cfg = tmp_path / "broken.yaml"
    cfg.write_text(NUCLEI_CFG.format(train=nuclei / "lists" / "broken.json"))
    assert main(["segment", "train", "--config", str(cfg), "--out", str(tmp_path / "m2")]) == 1
    line = _one_error_line(capsys.readouterr().err)
    assert "broken.json: entry 2 of 'training': file not found:" in line and "gone.png" in line
    pred_args = ["segment", "predict", "--model", str(tmp_path / "model"), "--input", str(datalist)]
    assert main([*pred_args, "--out", str(tmp_path / "p2"), "--datalist-key", "validation"]) == 1
    assert "nuclei.json: datalist has no 'validation' list (its keys: 'training', 'test')" in capsys.readouterr().err


def test_3d_datalist_with_regions_from_the_command_line(brats, tmp_path, capsys):
    metrics = _train_predict_evaluate(tmp_path, brats / "brats.json", BRATS_CFG)
    assert [c["case"] for c in metrics["per_case"]] == ["case2"]
    assert set(metrics["dice_per_region"]) == set(metrics["hd95_per_region"]) == {"WT", "TC", "ET"}
    assert all(0 <= d <= 1 for d in metrics["dice_per_region"].values())
    out = capsys.readouterr().out
    assert "region WT" in out and "region ET" in out
    # The prediction lies in the input's grid (the foreground crop undone); what was cropped away
    # (the background slices, RAS axis 0 reversed from the file's L) is certain background.
    label = np.asarray(nib.load(str(tmp_path / "pred" / "case2_label.nii.gz")).dataobj)
    prob = np.asarray(nib.load(str(tmp_path / "pred" / "case2_prob.nii.gz")).dataobj)
    assert label.shape == (20 + BACKGROUND, 20, 20) and prob.shape == (*label.shape, 5)
    assert (label[:BACKGROUND] == 0).all() and (prob[:BACKGROUND, ..., 0] == 1).all()
    assert (prob[BACKGROUND:].sum(-1) > 0.99).all() and not (prob[BACKGROUND:, ..., 0] == 1).all()


def test_regions_dice_on_a_known_case(brats):
    label, _ = read_label_volume(brats / "case1" / "OTMultiClass.nii.gz")
    truth = np.searchsorted(BRATS_VALUES, label)  # label values -> class indices (the same here)
    dice, hd = region_dice_hd95(truth, truth, BRATS_VALUES, REGIONS)
    assert dice == {"WT": 1.0, "TC": 1.0, "ET": 1.0} and hd == {"WT": 0.0, "TC": 0.0, "ET": 0.0}
    # Call k enhancing voxels oedema: WT is untouched, TC and ET lose k voxels.
    pred = truth.copy()
    enhancing = np.flatnonzero(truth == 4)
    k = len(enhancing) // 3
    pred.flat[enhancing[:k]] = 2
    n_et, n_tc = int((truth == 4).sum()), int(np.isin(truth, [1, 3, 4]).sum())
    dice, _ = region_dice_hd95(pred, truth, BRATS_VALUES, REGIONS)
    assert dice["WT"] == 1.0
    assert dice["ET"] == pytest.approx(2 * (n_et - k) / (n_et + n_et - k))
    assert dice["TC"] == pytest.approx(2 * (n_tc - k) / (n_tc + n_tc - k))


def test_training_patches_are_plain_tensors_and_leave_the_cache_untouched(nuclei):
    """The augmentation runs on the cached items themselves (no copy, for speed): it must never
    write into them, and the patches it gives the model carry no MONAI metadata."""
    import copy

    import torch
    from monai.data import MetaTensor, get_track_meta

    from biocnn.config import validate_config
    from biocnn.segment.config import SegmentConfig
    from biocnn.segment.train import split_cases, training_dataset

    cfg = validate_config(
        {
            "data": {
                "train": str(nuclei / "lists" / "nuclei.json"),
                "in_channels": 1,
                "normalize": "image",
                "patch_size": [24, 24],
                "samples_per_image": 3,
            },
            "inference": {"roi_size": [32, 32]},
        },
        SegmentConfig,
    )
    train_cases, _ = split_cases(cfg)
    ds = training_dataset(cfg, train_cases)
    before = copy.deepcopy(ds._cache)
    for _ in range(5):
        for i in range(len(ds)):
            patches = ds[i]
            assert len(patches) == 3
            for p in patches:
                assert type(p["image"]) is torch.Tensor and not isinstance(p["image"], MetaTensor)
                assert p["image"].shape == (1, 24, 24) and set(p) >= {"image", "label"}
                assert not any(k.endswith("_indices") for k in p)
    assert get_track_meta()  # switched off only while the augmentation ran
    for cached, saved in zip(ds._cache, before):
        for k in ("image", "label"):
            assert torch.equal(torch.as_tensor(cached[k]), torch.as_tensor(saved[k]))
