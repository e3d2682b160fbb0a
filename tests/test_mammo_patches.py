"""The patch model on real mammograms: sampling, the whole-view image score, train + score.

Six real mini-MIAS views (three women, read from ``../shared/data/real/mias``): three malignant
findings with lesion circles, one benign circle, two normal breasts.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import ndimage

from biocnn.cli import main
from biocnn.mammo.data import decode_file, read_manifest
from biocnn.mammo.heatmap import PatchClassifier, view_heatmaps
from biocnn.mammo.patches import PatchDataset, breast_region, crop_patch
from biocnn.mammo.platt import calibrated_probs
from biocnn.mammo.train import lesion_in_model_grid

REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "real"
MIAS = REAL / "mias"
VIEWS = ("mdb023.dcm", "mdb024.dcm", "mdb091.dcm", "mdb092.dcm", "mdb177.dcm", "mdb178.dcm")
SIZE = (192, 144)

pytestmark = pytest.mark.skipif(not MIAS.is_dir(), reason=f"real data not at {MIAS} (shared data absent)")


@pytest.fixture(autouse=True)
def _threads():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # shared cores: OpenMP spinning slows tiny models badly
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def manifest(tmp_path_factory) -> Path:
    """The six views as a manifest with absolute paths (the shared one's rows)."""
    with open(MIAS / "manifest.csv", newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        rows = [r for r in reader if r["path"] in VIEWS]
        fields = reader.fieldnames
    for r in rows:
        r["path"] = str(MIAS / r["path"])
        r["mask"] = str(MIAS / r["mask"]) if r["mask"] else ""
    path = tmp_path_factory.mktemp("mias") / "manifest.csv"
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    return path


@pytest.fixture(scope="module")
def views(manifest):
    """(records, decoded views, lesion masks in the model grid)."""
    records = read_manifest(manifest)
    decoded = [decode_file(r.path, SIZE, None, 2) for r in records]
    return records, decoded, [lesion_in_model_grid(r, d) for r, d in zip(records, decoded)]


def test_patches_sit_in_circles_and_in_normal_breast(views):
    records, decoded, lesions = views
    images = [d.image for d in decoded]
    assert sum(m is not None and m.any() for m in lesions) == 4  # three malignant circles, one benign
    size, margin = 32, 0.5
    ds = PatchDataset(images, lesions, [m is not None for m in lesions], size, 64, negative_margin=margin, shift=0.0)
    ds.scale, ds.gamma = 0.0, 0.0  # patches are then plain crops (turned and mirrored)
    np.random.seed(0)
    for positive in (True, False):
        for _ in range(60):
            i, (y, x), patch = ds.draw(positive)
            assert patch.shape == (1, size, size)
            crop = torch.from_numpy(crop_patch(images[i], (y, x), size))
            turns = [torch.rot90(crop, k) for k in range(4)]
            assert any(torch.equal(patch[0], t) or torch.equal(patch[0], t.flip(1)) for t in turns)
            if positive:
                assert lesions[i][y, x], "a positive patch is centred inside a lesion circle"
            else:
                near = ndimage.binary_dilation(breast_region(images[i]), iterations=size // 4)
                assert near[y, x], "a negative patch is centred in the breast (or at its edge)"
                if lesions[i] is not None and lesions[i].any():
                    distance = ndimage.distance_transform_edt(~lesions[i])[y, x]
                    assert distance > margin * size, "a negative patch keeps away from the circles"
    # Negatives come from every view, normal breasts included; positives only from circles.
    assert {i for i, _ in ds.negatives} == set(range(len(images)))
    assert {i for i, _ in ds.positives} == {i for i, m in enumerate(lesions) if m is not None and m.any()}
    # A view barred from negatives (a finding without a circle) gives none.
    barred = PatchDataset(images, lesions, [m is not None for m in lesions], size, 64, negative=[False] + [True] * 5)
    assert 0 not in {i for i, _ in barred.negatives} and len(barred.negatives) == len(images) - 1
    # Labels follow the index: the first positive_fraction of an epoch are findings.
    assert float(ds[0][1]) == 1.0 and float(ds[len(ds) - 1][1]) == 0.0


def test_image_score_is_the_pooled_window_logits(views):
    _, decoded, _ = views
    torch.manual_seed(0)
    model = PatchClassifier(channels=(4, 8, 8), strides=(2, 2, 2), patch_size=32, top_k=3).eval()
    x = torch.from_numpy(np.stack([d.image for d in decoded[:2]]))[:, None]
    with torch.no_grad():
        z = model.window_logits(x)
        logits = model(x)
    # Independently: windows with at least half of their pixels in the breast (non-zero),
    # each window 32 px wide, one stride (8 px) apart.
    for b in range(len(x)):
        inside = (x[b, 0] > 0).float().numpy()
        valid = np.zeros(z.shape[1:], dtype=bool)
        for r in range(z.shape[1]):
            for c in range(z.shape[2]):
                valid[r, c] = inside[8 * r : 8 * r + 32, 8 * c : 8 * c + 32].mean() >= 0.5
        assert 3 < valid.sum() < valid.size  # the background is left out, the breast is in
        expected = np.sort(z[b].numpy()[valid])[-3:].mean()
        assert float(logits[b]) == pytest.approx(float(expected), abs=1e-5)
    # The heatmap's peak is the best window's centre, and evaluate/score get the same logits.
    scores, heat = view_heatmaps(model, x)
    assert torch.allclose(scores, logits, atol=1e-6)
    assert heat.shape == x[:, 0].shape and float(heat.max()) <= 1.0
    zz = torch.where(model.breast_windows(x, *z.shape[1:]), z, torch.tensor(-1e9))
    for b in range(len(x)):
        r, c = np.unravel_index(int(zz[b].argmax()), zz[b].shape)
        y, xx = np.unravel_index(int(heat[b].argmax()), heat[b].shape)
        centre = (8 * (r + 1.5), 8 * (c + 1.5))  # window (r, c) covers cells r..r+3, cell i at 8 i
        assert abs(y - centre[0]) <= 4 and abs(xx - centre[1]) <= 4


def test_train_then_score_real_views_through_the_cli(manifest, tmp_path, capsys):
    config = tmp_path / "patch.yaml"
    config.write_text(
        "data: {manifest: x, val_fraction: 0.34, split_seed: 0}\n"
        f"input: {{height: {SIZE[0]}, width: {SIZE[1]}}}\n"
        "model: {channels: [4, 8, 8], strides: [2, 2, 2], hidden: []}\n"
        "method: patch\n"
        "patch: {size: 32, per_epoch: 64, top_k: 2}\n"
        "train: {epochs: 2, batch_size: 32, lr: 0.003, seed: 0, progress: false,"
        " early_stopping: {monitor: val_auc, mode: max, patience: 5}}\n"
    )
    model_dir, scores = tmp_path / "model", tmp_path / "scores"
    assert main(["mammo", "train", "--config", str(config), "--manifest", str(manifest), "--out", str(model_dir)]) == 0
    saved = json.loads((model_dir / "config.json").read_text())
    assert saved["model"]["name"] == "patch_classifier" and saved["method"] == "patch"
    assert saved["patch"]["positives"] == "finding"
    assert main(["mammo", "score", "--model", str(model_dir), "--input", str(manifest), "--out", str(scores)]) == 0
    assert (
        main(
            ["mammo", "score", "--model", str(model_dir), "--input", str(manifest), "--out", str(tmp_path / "h")]
            + ["--heatmaps", "--workers", "0"]
        )
        == 0
    )
    capsys.readouterr()
    # score's probability is the pooled window logit, calibrated as stored, with or without heatmaps.
    from biocnn.checkpoint import load_model

    model, _ = load_model(model_dir, torch.device("cpu"))
    op = json.loads((model_dir / "operating_point.json").read_text())
    for folder in (scores, tmp_path / "h"):
        rows = list(csv.DictReader(open(folder / "scores.csv", newline="", encoding="utf-8")))
        assert len(rows) == len(VIEWS)
        for row in rows:
            d = decode_file(
                Path(manifest.parent, row["file"]) if not Path(row["file"]).is_absolute() else Path(row["file"]),
                SIZE,
                None,
                2,
            )
            with torch.no_grad():
                logit = model(torch.from_numpy(d.image)[None, None])
            assert float(row["probability"]) == pytest.approx(
                float(calibrated_probs(logit, op["calibration"])[0]), abs=2e-6
            )
    heatmaps = list((tmp_path / "h" / "heatmaps").rglob("*.png"))
    assert len(heatmaps) == len(VIEWS)


def test_patch_size_off_the_stride_is_one_line_naming_key_and_file(tmp_path):
    from biocnn.errors import ConfigError
    from biocnn.mammo.train import train

    config = tmp_path / "bad.yaml"
    config.write_text(
        "data: {manifest: missing.csv}\nmodel: {channels: [4, 8, 8], strides: [2, 2, 2]}\n"
        "method: patch\npatch: {size: 36}\n"
    )
    with pytest.raises(ConfigError, match=r"bad\.yaml: patch\.size: 36 is not a multiple of the backbone's stride 8"):
        train(config, tmp_path / "model")
    assert not (tmp_path / "model").exists()
