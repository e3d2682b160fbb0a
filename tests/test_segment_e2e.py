"""Tiny end-to-end runs through the command line: synth -> train -> predict -> evaluate."""

from __future__ import annotations

import csv
import json
import shutil

import nibabel as nib
import numpy as np
import pytest
import tifffile
from PIL import Image

from biocnn.cli import main
from biocnn.segment.data import find_cases
from biocnn.segment.predict import Segmenter
from biocnn.segment.review import ReviewStats

MALARIA_CFG = """
data: {{train: {train}, spatial_dims: 2, in_channels: 3, label_values: [0, 1], patch_size: [32, 32],
        samples_per_image: 2}}
model: {{channels: [4, 8], decoder_dropout: [0.3]}}
train: {{epochs: 1, batch_size: 2, progress: false, seed: {seed},
         early_stopping: {{monitor: val_dice, mode: max, patience: 3}}}}
inference: {{roi_size: [32, 32], mc_samples: 3, mc_batch: 2}}
"""

TUMOR_CFG = """
data: {{train: {train}, spatial_dims: 3, in_channels: 4, modalities: [t1, t1ce, t2, flair],
        label_values: [0, 1, 2, 4], patch_size: [16, 16, 16], samples_per_image: 1}}
model: {{channels: [4, 8], norm: instance, decoder_dropout: [0.3]}}
train: {{epochs: 1, batch_size: 1, progress: false, early_stopping: {{monitor: val_dice, mode: max}}}}
inference: {{roi_size: [16, 16, 16], mc_samples: 2}}
"""


@pytest.fixture(autouse=True)
def _one_thread():
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)  # shared CI cores: OpenMP spinning slows tiny models badly
    yield
    torch.set_num_threads(n)


def _rows(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_malaria_end_to_end_with_ensemble_tta_and_a_bad_file(tmp_path, capsys, caplog):
    data, test = tmp_path / "train", tmp_path / "test"
    assert main(["segment", "synth", "--kind", "malaria", "--out", str(data), "--n", "4", "--size", "48"]) == 0
    assert (
        main(
            [
                "segment",
                "synth",
                "--kind",
                "malaria",
                "--out",
                str(test),
                "--n",
                "3",
                "--size",
                "40",
                "--seed",
                "5",
                "--format",
                "tif",
            ]
        )
        == 0
    )
    models = []
    for seed in (0, 1):
        cfg = tmp_path / f"cfg{seed}.yaml"
        cfg.write_text(MALARIA_CFG.format(train=data, seed=seed))
        models.append(tmp_path / f"model{seed}")
        assert main(["segment", "train", "--config", str(cfg), "--out", str(models[-1])]) == 0
    config = json.loads((models[0] / "config.json").read_text())
    assert config["provenance"]["seed"] == 0 and config["model"]["name"] == "unet"
    assert "val_dice" in json.loads((models[0] / "metrics.json").read_text())
    # Calibrated on the validation split: the temperature in config.json, what it did in metrics.json.
    calib = json.loads((models[0] / "metrics.json").read_text())["calibration"]
    assert config["inference"]["temperature"] == calib["temperature"] > 0
    assert calib["val_nll_after"] <= calib["val_nll_before"]
    # Same config and seed: the same weights.
    again = tmp_path / "again"
    assert main(["segment", "train", "--config", str(tmp_path / "cfg0.yaml"), "--out", str(again)]) == 0
    assert (again / "weights.safetensors").read_bytes() == (models[0] / "weights.safetensors").read_bytes()

    # A corrupt image among the inputs: reported, the others still predicted.
    (test / "images" / "broken.png").write_bytes(b"\x89PNG broken")
    pred = tmp_path / "pred"
    args = [
        "segment",
        "predict",
        "--input",
        str(test),
        "--out",
        str(pred),
        "--mc-samples",
        "4",
        "--tta",
        "--reference",
        str(data),
    ]
    for m in models:
        args += ["--model", str(m)]
    assert main(args) == 1
    out = capsys.readouterr().out
    assert "3 of 4 inputs predicted" in out and "broken.png" in out
    info = json.loads((pred / "predict.json").read_text())
    assert info["inputs_seen"] == info["outputs_written"] + len(info["failures"]) == 4
    # The ensemble's review threshold is measured on the training images with its own sampling:
    # the largest of the 4 values (conformal 0.9 quantile) that predict gives for them.
    assert info["review_reference"] == {"source": str(data), "images": 4, "failures": []}
    ref = tmp_path / "p_ref"
    assert (
        main(
            [
                "segment",
                "predict",
                "--input",
                str(data),
                "--out",
                str(ref),
                "--mc-samples",
                "4",
                "--tta",
                "--model",
                str(models[0]),
                "--model",
                str(models[1]),
            ]
        )
        == 0
    )
    assert info["review_threshold"] == max(float(r["structure_uncertainty"]) for r in _rows(ref / "uncertainty.csv"))
    assert info["temperatures"] == [
        json.loads((m / "config.json").read_text())["inference"]["temperature"] for m in models
    ]
    rows = _rows(pred / "uncertainty.csv")
    assert [r["case"] for r in rows] == ["field_000", "field_001", "field_002"]
    assert all(float(r["score"]) >= 0 for r in rows)
    prob = tifffile.imread(pred / "field_000_prob.tif")
    assert prob.shape == (2, 40, 40)
    np.testing.assert_allclose(prob.sum(0), 1, atol=1e-4)
    ent = tifffile.imread(pred / "field_000_entropy.tif")
    mi = tifffile.imread(pred / "field_000_mutual_info.tif")
    assert (mi >= 0).all() and (mi <= ent + 1e-5).all() and mi.max() > 0
    assert np.asarray(Image.open(pred / "field_000_label.png")).shape == (40, 40)
    assert Image.open(pred / "field_000_overlay.png").size[0] > 100

    # The review columns: feature statistics came with training, so the OOD columns are filled.
    assert (models[0] / "feature_stats.safetensors").is_file()
    for r in rows:
        assert r["flag"] in ("yes", "no")
        assert float(r["feature_distance"]) > 0 and 0 <= float(r["ood_percentile"]) <= 1
        assert float(r["score"]) >= float(r["structure_uncertainty"]) >= 0
        assert 0 <= float(r["expected_dice_error"]) <= 1
        assert (r["flag"] == "yes") == (float(r["score"]) >= info["review_threshold"])
    # An input whose structure uncertainty equals the threshold (a training image's value can)
    # is flagged: score >= threshold holds exactly for the flagged inputs.
    seg = Segmenter([models[0]], mc_samples=4)
    case = next(c for c in find_cases(test, 2, seg.data.modalities) if c.id == "field_000")
    first = seg.predict_case(case, tmp_path)
    seg.reviewer.threshold = first["structure_uncertainty"]
    again = seg.predict_case(case, tmp_path)
    assert again["structure_uncertainty"] == first["structure_uncertainty"] and again["flag"] == "yes"

    (test / "images" / "broken.png").unlink()
    metrics_path = tmp_path / "metrics.json"
    assert main(["segment", "evaluate", "--pred", str(pred), "--labels", str(test), "--out", str(metrics_path)]) == 0
    metrics = json.loads(metrics_path.read_text())
    for key in ("dice", "hd95", "error_auroc", "spearman", "ece", "dice_per_class"):
        assert key in metrics
    assert metrics["cases"] == 3 and 0 <= metrics["dice"] <= 1 and 0 <= metrics["ece"] <= 1

    # A model without review statistics (trained with inference.review_images: 0) still predicts: OOD columns empty,
    # the score is the structure uncertainty alone, no flag (no threshold known).
    old = tmp_path / "old_model"
    shutil.copytree(models[1], old)
    (old / "feature_stats.safetensors").unlink()
    assert (
        main(
            [
                "segment",
                "predict",
                "--model",
                str(old),
                "--input",
                str(test),
                "--out",
                str(tmp_path / "p_old"),
                "--mc-samples",
                "2",
            ]
        )
        == 0
    )
    for r in _rows(tmp_path / "p_old" / "uncertainty.csv"):
        assert r["feature_distance"] == r["ood_percentile"] == r["flag"] == ""
        assert float(r["score"]) == float(r["structure_uncertainty"])

    # An intensity-shifted input lies farther from the training images' features than they do.
    shifted = tmp_path / "shifted"
    assert (
        main(
            [
                "segment",
                "synth",
                "--kind",
                "malaria",
                "--out",
                str(shifted),
                "--n",
                "2",
                "--size",
                "48",
                "--seed",
                "8",
                "--shift",
                "intensity",
                "--severity",
                "2",
            ]
        )
        == 0
    )
    dist = {}
    for name, inputs in (("train", data), ("shifted", shifted)):
        assert (
            main(
                [
                    "segment",
                    "predict",
                    "--model",
                    str(models[0]),
                    "--input",
                    str(inputs),
                    "--out",
                    str(tmp_path / f"p_{name}"),
                ]
            )
            == 0
        )
        rows_ = _rows(tmp_path / f"p_{name}" / "uncertainty.csv")
        dist[name] = [float(r["feature_distance"]) for r in rows_]
    assert min(dist["shifted"]) > max(dist["train"])
    # The training images' reference values are what predict gives for them (the Monte Carlo
    # masks are seeded from the case id in both), whatever ran before them in training. (This
    # one-epoch model's probabilities sit near 1/2, so other masks change only the 6th digit.)
    stored = ReviewStats.load(models[0]).uncertainty["mc"]
    again_unc = [float(r["structure_uncertainty"]) for r in _rows(tmp_path / "p_train" / "uncertainty.csv")]
    assert sorted(again_unc) == pytest.approx(sorted(stored), rel=1e-9, abs=0)
    # Monte Carlo samples are seeded per case: predicting again gives the same numbers.
    assert (
        main(
            ["segment", "predict", "--model", str(models[0]), "--input", str(data), "--out", str(tmp_path / "p_again")]
        )
        == 0
    )
    assert (tmp_path / "p_again" / "uncertainty.csv").read_text() == (
        tmp_path / "p_train" / "uncertainty.csv"
    ).read_text()
    assert json.loads((tmp_path / "p_train" / "predict.json").read_text())["review_reference"] == {
        "source": "training statistics",
        "matched": True,
    }
    # More windows per forward pass (what a GPU wants) changes the speed, not the result.
    caplog.clear()
    for name, extra in (("p_sw_default", []), ("p_sw_7", ["--sw-batch-size", "7"])):
        assert (
            main(
                [
                    "segment",
                    "predict",
                    "--model",
                    str(models[0]),
                    "--input",
                    str(test),
                    "--out",
                    str(tmp_path / name),
                    "--mc-samples",
                    "1",
                    *extra,
                ]
            )
            == 0
        )
    # One sample where the stored values were measured with 3: said, not silently compared.
    assert "pass --reference" in caplog.text
    assert json.loads((tmp_path / "p_sw_7" / "predict.json").read_text())["review_reference"]["matched"] is False
    assert json.loads((tmp_path / "p_sw_7" / "predict.json").read_text())["sw_batch_size"] == 7
    for a, b in zip(
        _rows(tmp_path / "p_sw_default" / "uncertainty.csv"), _rows(tmp_path / "p_sw_7" / "uncertainty.csv")
    ):
        assert a["case"] == b["case"] and float(a["score"]) == pytest.approx(float(b["score"]), rel=1e-4, abs=1e-6)
    assert (
        main(
            [
                "segment",
                "predict",
                "--model",
                str(models[0]),
                "--input",
                str(test),
                "--out",
                str(tmp_path / "p_sw0"),
                "--sw-batch-size",
                "0",
            ]
        )
        == 1
    )


def test_tumor_end_to_end_keeps_affine_and_header(tmp_path, capsys):
    data, test = tmp_path / "train", tmp_path / "test"
    assert main(["segment", "synth", "--kind", "tumor", "--out", str(data), "--n", "3", "--size", "20"]) == 0
    assert (
        main(["segment", "synth", "--kind", "tumor", "--out", str(test), "--n", "2", "--size", "20", "--seed", "9"])
        == 0
    )
    cfg = tmp_path / "tumor.yaml"
    cfg.write_text(TUMOR_CFG.format(train=data))
    model = tmp_path / "model"
    assert main(["segment", "train", "--config", str(cfg), "--out", str(model)]) == 0
    # Review references for both ways of sampling, so a --tta prediction is judged against TTA's.
    values = ReviewStats.load(model).uncertainty
    assert len(values["mc"]) == len(values["tta"]) == 3
    pred_tta = tmp_path / "pred_tta"
    assert (
        main(["segment", "predict", "--model", str(model), "--input", str(test), "--out", str(pred_tta), "--tta"]) == 0
    )
    threshold = json.loads((pred_tta / "predict.json").read_text())["review_threshold"]
    # The TTA values' 0.9 quantile, finite-sample: ceil(4 x 0.9) = 4 > 3 values, so the largest.
    assert threshold == pytest.approx(max(values["tta"]))
    assert threshold != pytest.approx(max(values["mc"]))
    pred = tmp_path / "pred"
    assert main(["segment", "predict", "--model", str(model), "--input", str(test), "--out", str(pred)]) == 0
    src = nib.load(str(test / "case_000" / "case_000_t1.nii.gz"))
    for name in ("label", "prob", "entropy", "mutual_info"):
        out = nib.load(str(pred / f"case_000_{name}.nii.gz"))
        np.testing.assert_array_equal(out.affine, src.affine)
        assert out.shape[:3] == src.shape
        assert out.header.get_zooms()[:3] == src.header.get_zooms()[:3]
        assert int(out.header["qform_code"]) == int(src.header["qform_code"])
        assert int(out.header["sform_code"]) == int(src.header["sform_code"])
        assert out.header.get_xyzt_units() == src.header.get_xyzt_units()
    assert nib.load(str(pred / "case_000_prob.nii.gz")).shape == (20, 20, 20, 4)
    labels = np.asarray(nib.load(str(pred / "case_000_label.nii.gz")).dataobj)
    assert set(np.unique(labels)) <= {0, 1, 2, 4}
    assert len(_rows(pred / "uncertainty.csv")) == 2
    assert (
        main(["segment", "evaluate", "--pred", str(pred), "--labels", str(test), "--out", str(tmp_path / "m.json")])
        == 0
    )
    # A 2D image given to the 3D model: one-line error naming the file, exit 1.
    png = tmp_path / "x.png"
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(png)
    capsys.readouterr()
    assert main(["segment", "predict", "--model", str(model), "--input", str(png), "--out", str(pred)]) == 1
    assert "x.png: is a 2D image but the model is 3D" in capsys.readouterr().err
