"""Mammography: manifest and patient-level split, metrics, Grad-CAM, pseudonymisation, and a
tiny end-to-end synth -> train -> evaluate -> score through the command line."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from biocnn.cli import main
from biocnn.errors import InputError
from biocnn.mammo import metrics as M
from biocnn.mammo.data import Record, patient_split, read_manifest
from biocnn.mammo.gradcam import grad_cam, pointing_hit
from biocnn.mammo.score import Pseudonymiser
from biocnn.metrics import expected_calibration_error, roc_auc
from biocnn.models import Classifier

TINY_CONFIG = """
data: {{manifest: {manifest}, val_fraction: 0.34, split_seed: 1}}
input: {{height: 64, width: 48}}
model: {{channels: [4, 8, 8], strides: [2, 2, 1], hidden: [8]}}
augment: {{enabled: true}}
train: {{epochs: 2, batch_size: 8, lr: 0.003, seed: 3, progress: false,
        early_stopping: {{monitor: val_auc, mode: max, patience: 5}}}}
"""


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


# --------------------------------------------------------------------------- split and manifest
def test_patient_split_never_puts_a_patient_in_two_splits():
    rng = np.random.default_rng(0)
    records = [
        Record(Path(f"p{p}_{v}.dcm"), f"P{p}", f"S{p}", lat, view, int(p % 3 == 0 and lat == "L"))
        for p in range(60)
        for v, (lat, view) in enumerate([("L", "CC"), ("L", "MLO"), ("R", "CC"), ("R", "MLO")])
    ]
    rng.shuffle(records)
    split = patient_split(records, 0.2, 0.2, seed=4)
    by_split: dict[str, set[str]] = {}
    for r in records:
        by_split.setdefault(split[r.patient_id], set()).add(r.patient_id)
    assert set(by_split) == {"train", "val", "test"}
    assert not (by_split["train"] & by_split["val"]) and not (by_split["train"] & by_split["test"])
    assert not (by_split["val"] & by_split["test"])
    assert sum(len(s) for s in by_split.values()) == 60
    # Stratified: each split has cancers (20 of the 60 patients have one).
    positives = {r.patient_id for r in records if r.label}
    for name in ("train", "val", "test"):
        assert by_split[name] & positives
    assert split == patient_split(list(reversed(records)), 0.2, 0.2, seed=4)  # order does not matter


def test_manifest_errors_name_the_line(tmp_path):
    path = tmp_path / "m.csv"
    path.write_text("path,patient_id,study_id,laterality,view,label\na.dcm,P,S,X,CC,1\n")
    with pytest.raises(InputError, match="line 2: laterality"):
        read_manifest(path)
    path.write_text("path,patient_id,label\n")
    with pytest.raises(InputError, match="missing column"):
        read_manifest(path)


# --------------------------------------------------------------------------- metrics
def test_metrics_on_known_cases():
    y = np.array([0] * 10 + [1] * 10)
    perfect = np.r_[np.linspace(0, 0.4, 10), np.linspace(0.6, 1, 10)]
    assert roc_auc(y, perfect) == 1.0
    assert M.sensitivity_at_specificity(y, perfect) == 1.0
    assert M.specificity_at_sensitivity(y, perfect) == 1.0
    assert roc_auc(y, 1 - perfect) == 0.0
    t = M.threshold_for_sensitivity(y, perfect, 0.9)
    assert M.rates_at(y, perfect, t)["sensitivity"] >= 0.9
    assert t == pytest.approx(np.sort(perfect[y == 1])[1])  # the 2nd lowest positive: 9/10 flagged
    low, high = M.bootstrap_auc(y, np.r_[np.linspace(0, 0.6, 10), np.linspace(0.4, 1, 10)], n=200)
    assert 0.5 < low < high <= 1.0
    # Calibration: probabilities equal to the observed frequency give ECE 0.
    p = np.r_[np.full(10, 0.25), np.full(10, 0.75)]
    y_cal = np.r_[[1] * 2 + [0] * 8, [1] * 8 + [0] * 2].astype(int)
    assert expected_calibration_error(y_cal, p, M.ECE_BINS) == pytest.approx(0.05)  # |0.2-0.25| and |0.8-0.75|
    assert expected_calibration_error(np.r_[[1] * 5 + [0] * 15], np.full(20, 0.25), M.ECE_BINS) == pytest.approx(0.0)


def test_breast_and_exam_aggregation():
    rows = [
        {"study": "S1", "patient": "P", "laterality": "L", "view": "CC", "probability": 0.2, "label": 0},
        {"study": "S1", "patient": "P", "laterality": "L", "view": "MLO", "probability": 0.4, "label": 0},
        {"study": "S1", "patient": "P", "laterality": "R", "view": "CC", "probability": 0.9, "label": 1},
    ]
    breasts, exams = M.aggregate(rows, "mean")
    assert [b["probability"] for b in breasts] == pytest.approx([0.3, 0.9])
    assert exams[0]["probability"] == pytest.approx(0.9) and exams[0]["label"] == 1
    breasts, _ = M.aggregate(rows, "max")
    assert breasts[0]["probability"] == pytest.approx(0.4)


def test_grad_cam_finds_the_region_that_drives_the_logit():
    torch.manual_seed(0)
    model = Classifier(2, 1, 1, channels=(4, 8), strides=(1, 2), hidden=(), pool="max").eval()
    with torch.no_grad():  # make the score depend on the brightest spot only
        for p in model.parameters():
            p.abs_()
    x = torch.zeros(1, 1, 32, 32)
    x[0, 0, 20:24, 8:12] = 1.0
    logits, cam = grad_cam(model, x)
    assert cam.shape == (1, 32, 32) and float(cam.max()) == pytest.approx(1.0)
    mask = np.zeros((32, 32), bool)
    mask[18:26, 6:14] = True
    assert pointing_hit(cam[0].numpy(), mask)
    assert not pointing_hit(cam[0].numpy(), ~mask)


def test_platt_calibration_undoes_a_logit_shift_and_keeps_the_ranking():
    from biocnn.mammo.platt import calibrated_probs, fit_platt

    rng = np.random.default_rng(0)
    true_logit = rng.normal(0, 2, 2000)
    y = (rng.random(2000) < 1 / (1 + np.exp(-true_logit))).astype(int)
    shifted = true_logit + 2.5  # what class balancing does: every probability too high
    cal = fit_platt(shifted, y)
    assert cal["slope"] == pytest.approx(1.0, abs=0.15) and cal["intercept"] == pytest.approx(-2.5, abs=0.3)
    raw, fixed = calibrated_probs(shifted, None), calibrated_probs(shifted, cal)
    assert expected_calibration_error(y, fixed, M.ECE_BINS) < 0.5 * expected_calibration_error(y, raw, M.ECE_BINS)
    assert (np.argsort(raw, kind="stable") == np.argsort(fixed, kind="stable")).all()  # monotone map
    with pytest.raises(ValueError, match="both classes"):
        fit_platt([0.1, 0.2], [1, 1])


def test_pseudonyms_are_keyed_and_stable():
    a, b = Pseudonymiser(b"k" * 32), Pseudonymiser(b"j" * 32)
    assert a("PID1", "P") == a("PID1", "P") != b("PID1", "P")
    assert a("PID1", "P") != a("PID2", "P") and "PID1" not in a("PID1", "P")
    assert Pseudonymiser(None)("PID1", "P") == "PID1"


# --------------------------------------------------------------------------- end to end
@pytest.mark.slow
def test_synth_train_evaluate_score_end_to_end(tmp_path, capsys):
    data = tmp_path / "data"
    assert (
        main(
            [
                "mammo",
                "synth",
                "--out",
                str(data),
                "--exams",
                "12",
                "--seed",
                "5",
                "--rows",
                "160",
                "--cols",
                "128",
                "--tomo",
                "1",
                "--tomo-frames",
                "4",
            ]
        )
        == 0
    )
    manifest = read_csv(data / "manifest.csv")
    assert len(manifest) == 48 and {r["view"] for r in manifest} == {"CC", "MLO"}
    config = tmp_path / "tiny.yaml"
    config.write_text(TINY_CONFIG.format(manifest=data / "manifest.csv"))
    model_dir = tmp_path / "model"
    assert main(["mammo", "train", "--config", str(config), "--out", str(model_dir)]) == 0
    for name in ("weights.safetensors", "config.json", "metrics.json", "operating_point.json", "split.csv"):
        assert (model_dir / name).is_file(), name
    op = json.loads((model_dir / "operating_point.json").read_text())
    assert op["chosen_on"] == "validation" and 0 <= op["threshold"] <= 1
    assert op["calibration"]["method"] == "platt" and op["calibration"]["fitted_on"] == "validation"
    cfg = json.loads((model_dir / "config.json").read_text())
    assert cfg["provenance"]["seed"] == 3 and cfg["model"]["name"] == "classifier"
    split = read_csv(model_dir / "split.csv")
    patients: dict[str, set[str]] = {}
    for r in split:
        patients.setdefault(r["patient_id"], set()).add(r["split"])
    assert all(len(s) == 1 for s in patients.values())

    ev = tmp_path / "eval"
    assert (
        main(
            [
                "mammo",
                "evaluate",
                "--model",
                str(model_dir),
                "--manifest",
                str(data / "manifest.csv"),
                "--out",
                str(ev),
                "--heatmaps",
                "2",
            ]
        )
        == 0
    )
    result = json.loads((ev / "metrics.json").read_text())
    for key in ("auc", "auc_ci_low", "auc_ci_high", "sens_at_spec90", "spec_at_sens90", "ece", "pointing_game"):
        assert key in result
    assert result["image"]["n"] == 48 and result["breast"]["n"] == 24 and result["exam"]["n"] == 12
    assert (ev / "roc.png").stat().st_size > 1000 and (ev / "reliability.png").stat().st_size > 1000
    assert len(list((ev / "heatmaps").glob("*.png"))) == 2

    # Score the whole folder: DICOM views, tomosynthesis volumes (2D model: a reason),
    # masks/manifests (not DICOM: a reason) and a junk file.
    (data / "dicom" / "junk.dcm").write_bytes(b"\x00" * 300)
    out = tmp_path / "scores"
    capsys.readouterr()
    assert (
        main(
            [
                "mammo",
                "score",
                "--model",
                str(model_dir),
                "--input",
                str(data),
                "--out",
                str(out),
                "--heatmaps",
                "--workers",
                "1",
            ]
        )
        == 0
    )
    summary = json.loads((out / "summary.json").read_text())
    n_files = sum(1 for p in data.rglob("*") if p.is_file())
    scores, failures = read_csv(out / "scores.csv"), read_csv(out / "failures.csv")
    assert summary["files_seen"] == n_files == summary["scored"] + summary["failed"]
    assert len(scores) == 48 and len(failures) == n_files - 48
    reasons = {r["file"]: r["reason"] for r in failures}
    assert "not a DICOM file" in reasons["dicom/junk.dcm"]
    assert reasons["dicom/exam-0000/L_CC_tomo.dcm"].startswith("a 4-frame volume")
    assert all(r["reason"] for r in failures)
    exams = read_csv(out / "exams.csv")
    assert len(exams) == 24 and {r["laterality"] for r in exams} == {"L", "R"}
    threshold = op["threshold"]
    # flagged is decided on the unrounded probability; the CSV holds 6 decimals.
    assert all(
        int(r["flagged"]) == (float(r["probability"]) >= threshold)
        for r in scores
        if abs(float(r["probability"]) - threshold) > 1e-6
    )
    heatmaps = [out / r["heatmap"] for r in scores]
    assert all(h.is_file() for h in heatmaps)
    # Pseudonymised: no patient ID, study UID or patient name anywhere in the outputs.
    secrets_ = {r["patient_id"] for r in manifest} | {r["study_id"] for r in manifest} | {"Synthetic^Patient"}
    text = "".join(p.read_text(errors="ignore") for p in out.rglob("*") if p.suffix in (".csv", ".json"))
    text += "".join(str(p) for p in out.rglob("*"))
    assert not any(s in text for s in secrets_)
    assert all(r["patient"].startswith("P-") and r["study"].startswith("S-") for r in scores)

    # A second run scores nothing again; --force does; --keep-ids keeps the IDs.
    before = (out / "scores.csv").read_text()
    assert (
        main(["mammo", "score", "--model", str(model_dir), "--input", str(data), "--out", str(out), "--workers", "0"])
        == 0
    )
    again = json.loads((out / "summary.json").read_text())
    assert again["this_run"]["scored"] == 0 and again["this_run"]["skipped_done"] == n_files
    assert (out / "scores.csv").read_text() == before
    kept = tmp_path / "kept"
    assert (
        main(
            [
                "mammo",
                "score",
                "--model",
                str(model_dir),
                "--input",
                str(data / "manifest.csv"),
                "--out",
                str(kept),
                "--keep-ids",
                "--workers",
                "0",
            ]
        )
        == 0
    )
    kept_scores = read_csv(kept / "scores.csv")
    assert {r["patient"] for r in kept_scores} == {r["patient_id"] for r in manifest}
    probs = {r["file"]: float(r["probability"]) for r in scores}
    for r in kept_scores:  # same model, same files: same probabilities
        assert float(r["probability"]) == pytest.approx(probs[r["file"]], abs=1e-5)
    assert (
        main(
            [
                "mammo",
                "score",
                "--model",
                str(model_dir),
                "--input",
                str(data / "manifest.csv"),
                "--out",
                str(kept),
                "--keep-ids",
                "--force",
                "--workers",
                "0",
            ]
        )
        == 0
    )
    assert json.loads((kept / "summary.json").read_text())["this_run"]["scored"] == 48


def test_cli_errors_are_one_line(tmp_path, capsys):
    (tmp_path / "bad.yaml").write_text("data: {manifest: x.csv}\nmodel: {channels: oops}\n")
    assert main(["mammo", "train", "--config", str(tmp_path / "bad.yaml"), "--out", str(tmp_path / "m")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "model.channels" in err
    assert (
        main(["mammo", "score", "--model", str(tmp_path), "--input", str(tmp_path), "--out", str(tmp_path / "o")]) == 1
    )
    assert "config.json" in capsys.readouterr().err


@pytest.mark.slow
def test_tomosynthesis_3d_model_trains_and_scores(tmp_path):
    """The 3D variant: the same backbone with spatial_dims 3, on tomosynthesis volumes."""
    data = tmp_path / "data"
    assert (
        main(
            [
                "mammo",
                "synth",
                "--out",
                str(data),
                "--exams",
                "8",
                "--seed",
                "8",
                "--rows",
                "128",
                "--cols",
                "96",
                "--tomo",
                "8",
                "--tomo-frames",
                "6",
            ]
        )
        == 0
    )
    volumes = read_csv(data / "tomo_manifest.csv")
    assert len(volumes) == 16 and {r["label"] for r in volumes} == {"0", "1"}
    config = tmp_path / "tomo.yaml"
    config.write_text(
        TINY_CONFIG.format(manifest=data / "tomo_manifest.csv")
        .replace("input: {height: 64, width: 48}", "input: {height: 40, width: 32, depth: 4}")
        .replace("model: {channels: [4, 8, 8]", "model: {spatial_dims: 3, channels: [4, 8, 8]")
        .replace("epochs: 2", "epochs: 1")
    )
    model_dir = tmp_path / "model3d"
    assert main(["mammo", "train", "--config", str(config), "--out", str(model_dir)]) == 0
    assert json.loads((model_dir / "config.json").read_text())["model"]["spatial_dims"] == 3
    out = tmp_path / "scores"
    assert (
        main(
            [
                "mammo",
                "score",
                "--model",
                str(model_dir),
                "--input",
                str(data / "dicom"),
                "--out",
                str(out),
                "--heatmaps",
                "--workers",
                "0",
            ]
        )
        == 0
    )
    scores, failures = read_csv(out / "scores.csv"), read_csv(out / "failures.csv")
    assert len(scores) == 16 and all(r["file"].endswith("_tomo.dcm") for r in scores)
    assert len(failures) == 32 and all("2D view" in r["reason"] for r in failures)
    assert all((out / r["heatmap"]).is_file() for r in scores)
