"""A user's own datasets through the real workflow rules, from one config file (issue 24).

Built in a temporary folder from a few files of ``../shared/data/real``: four MIAS views of two
women to train on and four of two other women to test on (manifests in biocnn's format, the
label column chosen: ``abnormal``), the test women's DICOM files copied as a folder of studies
to score, and nuclei crops (RGBA, as published) in a datalist, with a folder of unlabelled
crops to predict. One ``snakemake --configfile`` run of the repository's Snakefile at toy
sizes; the test skips when the shared data is absent.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image
from test_mammo_workflow import TRAIN_CONFIG as TINY_MAMMO
from workflow_helpers import REPO, run_workflow

REAL = REPO.parent / "shared" / "data" / "real"
SPLITS = REPO / "data" / "real"
pytestmark = pytest.mark.skipif(
    not (REAL / "mias").is_dir() or not (REAL / "nuclei").is_dir(),
    reason=f"real data not at {REAL} (shared data absent)",
)

# Each woman has one breast with a lesion (`abnormal` 1) and one without; none is malignant, so
# the default `label` column would give a single class: the evaluation below shows which was read.
TRAIN_WOMEN, TEST_WOMEN = ("MIAS003", "MIAS006"), ("MIAS007", "MIAS009")

NUCLEI_CONFIG = {
    "data": {
        "train": "set-by-the-workflow",
        "spatial_dims": 2,
        "in_channels": 1,
        "normalize": "image",
        "label_values": [0, 1],
        "patch_size": [32, 32],
        "samples_per_image": 2,
        "val_fraction": 0.34,
    },
    "model": {"channels": [4, 8], "decoder_dropout": [0.3]},
    "train": {
        "epochs": 1,
        "batch_size": 2,
        "progress": False,
        "early_stopping": {"monitor": "val_dice", "mode": "max"},
    },
    "inference": {"roi_size": [32, 32], "mc_samples": 2, "mc_batch": 2},
}


def _read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _mias(root: Path) -> dict:
    """Train and test manifests (absolute paths to the real DICOM files) and a folder of the test
    women's studies, one sub-folder per woman."""
    rows = _read_csv(SPLITS / "mias_train.csv")
    for r in rows:
        r["path"] = str((SPLITS / r["path"]).resolve())
        r["mask"] = str((SPLITS / r["mask"]).resolve()) if r["mask"] else ""
    manifests = {}
    for split, women in (("train", TRAIN_WOMEN), ("test", TEST_WOMEN)):
        chosen = [r for r in rows if r["patient_id"] in women]
        assert len(chosen) == 4 and sorted(int(r["abnormal"]) for r in chosen) == [0, 0, 1, 1]
        manifests[split] = root / f"mias_{split}.csv"
        with open(manifests[split], "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(chosen[0]))
            writer.writeheader()
            writer.writerows(chosen)
        if split == "test":
            for r in chosen:
                (root / "clinic" / r["patient_id"]).mkdir(parents=True, exist_ok=True)
                shutil.copyfile(r["path"], root / "clinic" / r["patient_id"] / Path(r["path"]).name)
    return {"train": str(manifests["train"]), "test": str(manifests["test"]), "score": {"clinic": str(root / "clinic")}}


def _crop(arr: np.ndarray, label: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """A ``size`` x ``size`` crop centred on the label's foreground."""
    ys, xs = np.nonzero(label)
    y = int(np.clip(ys.mean() - size // 2, 0, label.shape[0] - size))
    x = int(np.clip(xs.mean() - size // 2, 0, label.shape[1] - size))
    return arr[y : y + size, x : x + size], label[y : y + size, x : x + size]


def _nuclei(root: Path) -> dict:
    """Five 48 x 48 crops of real nuclei images in a datalist (3 training, 2 test) and two more,
    without labels, in a folder to predict."""
    entries = json.loads((SPLITS / "nuclei.json").read_text())["training"][:7]
    (root / "nuclei").mkdir()
    (root / "new_images").mkdir()
    listed = []
    for i, e in enumerate(entries):
        rgba = np.asarray(Image.open(SPLITS / e["image"]))
        image, label = _crop(rgba, np.asarray(Image.open(SPLITS / e["label"])), 48)
        if i < 5:
            Image.fromarray(np.ascontiguousarray(image)).save(root / "nuclei" / f"n{i}.png")
            Image.fromarray(np.ascontiguousarray(label)).save(root / "nuclei" / f"n{i}_mask.png")
            listed.append({"image": f"nuclei/n{i}.png", "label": f"nuclei/n{i}_mask.png"})
        else:
            Image.fromarray(np.ascontiguousarray(image)).save(root / "new_images" / f"new{i}.png")
    (root / "nuclei.json").write_text(json.dumps({"training": listed[:3], "test": listed[3:]}))
    (root / "nuclei.yaml").write_text(yaml.safe_dump(NUCLEI_CONFIG))
    return {
        "config": str(root / "nuclei.yaml"),
        "train": str(root / "nuclei.json"),
        "test": str(root / "nuclei.json"),
        "predict": {"new": str(root / "new_images")},
        "mc_samples": 2,
    }


@pytest.mark.slow
def test_a_users_datasets_run_end_to_end_from_one_config(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "mammo.yaml").write_text(
        yaml.safe_dump({**TINY_MAMMO, "data": {**TINY_MAMMO["data"], "val_fraction": 0.5}})
    )
    config = {
        "results": "results",
        "tasks": ["mammo", "segment"],
        "biocnn": f"{sys.executable} -m biocnn",
        "browser_check": False,
        "title": "my datasets",
        "mammo": {"config": str(data / "mammo.yaml"), "label_column": "abnormal", **_mias(data)},
        "segment": {"datasets": {"nuclei": _nuclei(data)}},
    }
    (tmp_path / "user.yaml").write_text(yaml.safe_dump(config))
    # One thread per job: the two cores run two jobs at once instead of four threads fighting over them.
    run = run_workflow(tmp_path, tmp_path / "user.yaml", env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    res = tmp_path / "results"
    # Nothing generated: the workflow ran on the given files only.
    assert not (res / "mammo" / "synth").exists() and not (res / "segment" / "malaria").exists()

    # Mammography: evaluated on the test manifest with the chosen label column, ...
    predictions = _read_csv(res / "mammo" / "evaluate" / "predictions.csv")
    assert len(predictions) == 4 and sum(int(r["label"]) for r in predictions) == 2
    metrics = json.loads((res / "mammo" / "evaluate" / "metrics.json").read_text())
    assert metrics["image"]["n"] == 4 and metrics["image"]["positives"] == 2
    # ... and the folder of studies scored: one row per DICOM file, none failed.
    scores = _read_csv(res / "mammo" / "scores" / "clinic" / "scores.csv")
    copied = sorted(str(p.relative_to(data / "clinic")) for p in (data / "clinic").rglob("*.dcm"))
    assert sorted(r["file"] for r in scores) == copied
    assert all(0.0 <= float(r["probability"]) <= 1.0 for r in scores)
    summary = json.loads((res / "mammo" / "scores" / "clinic" / "summary.json").read_text())
    assert (summary["files_seen"], summary["scored"], summary["failed"]) == (4, 4, 0)

    # Segmentation: the datalist's test list predicted and evaluated, the folder predicted.
    seg = res / "segment" / "nuclei"
    evaluation = json.loads((seg / "evaluate" / "metrics.json").read_text())
    assert evaluation["cases"] == 2 and 0.0 <= evaluation["dice"] <= 1.0
    predicted = _read_csv(seg / "predictions" / "new" / "uncertainty.csv")
    assert sorted(r["case"] for r in predicted) == ["new5", "new6"]
    assert (seg / "predictions" / "new" / "new5_overlay.png").is_file()

    # The report: every dataset by name, with its figures embedded.
    page = (res / "report.html").read_text()
    assert "<title>my datasets</title>" in page
    for text in (
        "clinic: Grad-CAM of the highest-probability view",  # the scored folder
        "<h4>nuclei</h4>",  # the dataset's metrics
        'alt="nuclei score vs error"',
        "nuclei / new: most uncertain case new",  # the predicted folder
    ):
        assert text in page, text
    assert page.count("data:image/png;base64,") >= 6
