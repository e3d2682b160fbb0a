"""Real mini-MIAS film scans through the pipeline: the crop, the label column, scoring a folder.

Eight real views of four women, read from ``../shared/data/real/mias``: MIAS001 (benign
circles in both breasts: label 0, abnormal 1), MIAS003 (one benign circle), MIAS018 and
MIAS020 (normal).
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from biocnn.cli import main
from biocnn.errors import InputError
from biocnn.io.dicom import read_mammogram
from biocnn.mammo.data import read_manifest
from biocnn.mammo.preprocess import preprocess
from biocnn.mammo.score import score
from biocnn.synthetic.mammo import read_mask

REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "real"
MIAS = REAL / "mias"
VIEWS = ("mdb001", "mdb002", "mdb005", "mdb006", "mdb035", "mdb036", "mdb039", "mdb040")

pytestmark = pytest.mark.skipif(not MIAS.is_dir(), reason=f"real data not at {MIAS} (shared data absent)")


@pytest.fixture(autouse=True)
def _threads():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # shared cores: OpenMP spinning slows tiny models badly
    yield
    torch.set_num_threads(before)


def _rows() -> list[dict[str, str]]:
    with open(MIAS / "manifest.csv", newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if Path(r["path"]).stem in VIEWS]
    for r in rows:  # absolute paths, so the manifest can live in tmp_path
        r["path"] = str(MIAS / r["path"])
        r["mask"] = str(MIAS / r["mask"]) if r["mask"] else ""
    return rows


def _write(path: Path, rows: list[dict[str, str]], columns: list[str] | None = None) -> Path:
    columns = columns or list(rows[0])
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return path


# --------------------------------------------------------------------------- the crop
# Regions of the stored images, read off the contact sheet (docs/figures/mammo_mias_crops.png):
# (rows, columns) of the film label and, for mdb002, the scanner band along the top edge that
# the earlier crop took for breast (it joined the label to the breast and stretched the box).
LABELS = {
    "mdb002": [(slice(92, 237), slice(717, 812)), (slice(0, 7), slice(700, 837))],
    "mdb005": [(slice(0, 108), slice(187, 361))],
}


@pytest.mark.parametrize("name", sorted(LABELS))
def test_crop_keeps_the_breast_and_drops_the_label(name):
    mammo = read_mammogram(MIAS / f"{name}.dcm")
    image, geom = preprocess(mammo.pixels, mammo.laterality, (288, 192))
    for rows, cols in LABELS[name]:
        label = np.zeros(mammo.pixels.shape, dtype=np.float32)
        label[rows, cols] = 1
        assert mammo.pixels[rows, cols].max() > 0.6  # the label is there, and bright
        where = geom.apply(label) > 0
        # Outside the crop, or inside it but zeroed with the background.
        assert not where.any() or image[where].max() == 0, f"{name}: label at {rows}, {cols} reaches the model"
    # The radiologists' lesion circle lies inside the crop, and its tissue reaches the model.
    circle = read_mask(MIAS / "masks" / f"{name}.png") > 0
    carried = geom.apply(circle.astype(np.float32))
    assert carried.sum() == pytest.approx(circle.sum() * geom.scale**2, rel=0.02)
    assert (image[carried > 0.5] > 0.05).mean() > 0.99
    # The box is the breast's: the crop is mostly breast, not background padding.
    assert (image > 0.05).mean() > 0.5


# --------------------------------------------------------------------------- the label column
def test_label_column_is_read_and_bad_columns_are_one_line(tmp_path):
    rows = _rows()
    manifest = _write(tmp_path / "m.csv", rows)
    by_name = {Path(r["path"]).stem: r for r in rows}
    malignant = {r.path.stem: r.label for r in read_manifest(manifest)}
    abnormal = {r.path.stem: r.label for r in read_manifest(manifest, "abnormal")}
    assert malignant == {n: int(r["label"]) for n, r in by_name.items()}
    assert abnormal == {n: int(r["abnormal"]) for n, r in by_name.items()}
    assert malignant["mdb001"] == 0 and abnormal["mdb001"] == 1  # a benign finding

    with pytest.raises(InputError) as err:
        read_manifest(manifest, "malignancy")
    message = str(err.value)
    assert "\n" not in message and str(manifest) in message and "'malignancy'" in message
    with pytest.raises(InputError, match=r"line 2: abnormality must be 0 or 1, got 'CIRC'"):
        read_manifest(manifest, "abnormality")


def test_train_cli_names_a_missing_label_column_in_one_line(tmp_path, capsys):
    manifest = _write(tmp_path / "m.csv", _rows())
    code = main(
        [
            "mammo",
            "train",
            "--config",
            str(Path(__file__).resolve().parents[1] / "configs" / "mammo_demo.yaml"),
            "--manifest",
            str(manifest),
            "--label-column",
            "cancer",
            "--out",
            str(tmp_path / "model"),
        ]
    )
    err = capsys.readouterr().err.strip()
    assert code != 0
    assert len(err.splitlines()) == 1 and "'cancer'" in err and str(manifest) in err


@pytest.fixture(scope="module")
def abnormal_model(tmp_path_factory):
    """A tiny model trained on the eight views with ``--label-column abnormal``."""
    tmp = tmp_path_factory.mktemp("mias")
    manifest = _write(tmp / "manifest.csv", _rows())
    config = {
        "data": {"manifest": str(manifest), "val_fraction": 0.5, "split_seed": 0},
        "input": {"height": 96, "width": 64},
        "model": {"channels": [4, 8], "strides": [2, 2], "hidden": [8]},
        "augment": {"enabled": False},
        "train": {"epochs": 1, "batch_size": 4, "seed": 0, "progress": False},
    }
    (tmp / "config.yaml").write_text(yaml.safe_dump(config))
    out = tmp / "model"
    args = ["mammo", "train", "--config", str(tmp / "config.yaml"), "--out", str(out), "--device", "cpu"]
    assert main([*args, "--label-column", "abnormal"]) == 0
    return out, manifest


def test_training_uses_the_named_label_column(abnormal_model):
    out, manifest = abnormal_model
    with open(out / "split.csv", newline="") as fh:
        split = {Path(r["path"]).stem: r for r in csv.DictReader(fh)}
    expected = {Path(r["path"]).stem: r["abnormal"] for r in _rows()}
    assert {n: r["label"] for n, r in split.items()} == expected
    # Stratified on abnormal: each part has a woman with a finding (with `label` none has one).
    assert {r["split"] for r in split.values() if r["label"] == "1"} == {"train", "val"}
    with open(out / "config.json") as fh:
        assert yaml.safe_load(fh)["data"]["label_column"] == "abnormal"


# --------------------------------------------------------------------------- scoring real files
def test_score_real_files_with_a_missing_breast(abnormal_model, tmp_path):
    """MIAS001 has both breasts (MLO only), MIAS003 only its right one here."""
    model, _ = abnormal_model
    folder = tmp_path / "studies"
    folder.mkdir()
    for name in ("mdb001", "mdb002", "mdb005"):
        os.symlink(MIAS / f"{name}.dcm", folder / f"{name}.dcm")
    summary = score(model, folder, tmp_path / "out", keep_ids=True, workers=0, progress=False)
    assert summary["scored"] == 3 and summary["failed"] == 0

    with open(tmp_path / "out" / "scores.csv", newline="") as fh:
        scores = {r["file"]: r for r in csv.DictReader(fh)}
    assert sorted(scores) == ["mdb001.dcm", "mdb002.dcm", "mdb005.dcm"]
    assert {r["view"] for r in scores.values()} == {"MLO"}
    with open(tmp_path / "out" / "exams.csv", newline="") as fh:
        exams = list(csv.DictReader(fh))
    by_patient: dict[str, list[dict[str, str]]] = {}
    for r in exams:
        by_patient.setdefault(r["patient"], []).append(r)
    assert sorted((p, len(rows)) for p, rows in by_patient.items()) == [("MIAS001", 2), ("MIAS003", 1)]
    for r in exams:  # one view per breast: the breast scores its MLO, and says CC is missing
        view = next(s for s in scores.values() if s["patient"] == r["patient"] and s["laterality"] == r["laterality"])
        assert r["views"] == "MLO" and r["missing_views"] == "CC"
        assert r["breast_probability"] == view["probability"]
    both, (single,) = by_patient["MIAS001"], by_patient["MIAS003"]
    assert {r["exam_breasts"] for r in both} == {"L,R"}
    assert {r["exam_probability"] for r in both} == {max((r["breast_probability"] for r in both), key=float)}
    assert single["laterality"] == "R" and single["exam_breasts"] == "R"
    assert single["exam_probability"] == single["breast_probability"] == scores["mdb005.dcm"]["probability"]
