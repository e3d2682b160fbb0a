"""What a hostile folder finds (issue 22): write errors, killed writers, other tasks' models,
odd images, and segmentation batches with bad cases or overflowing intensities."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image

from biocnn.checkpoint import load_model, save_model
from biocnn.cli import main
from biocnn.config import validate_config
from biocnn.errors import CheckpointError, InputError
from biocnn.io import atomic
from biocnn.io.atomic import write_json
from biocnn.io.images import read_image
from biocnn.io.paths import safe_component
from biocnn.models import build_model
from biocnn.segment.config import SegmentConfig
from biocnn.segment.train import model_spec
from biocnn.synthetic.tumor import MODALITIES, write_tumor

REPO = Path(__file__).resolve().parents[1]


def _one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert "Traceback" not in err
    assert len(lines) == 1 and lines[0].startswith("biocnn: error: "), err
    return lines[0]


# ----------------------------------------------------------------------------- write errors
def test_output_under_a_file_is_one_line_error(tmp_path, capsys):
    """Not a chmod 555 folder: the tests run as root, where that stays writable. A path below a
    regular file fails for every user (ENOTDIR)."""
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(["info", "--out", str(blocker / "info.json")]) == 1
    line = _one_error_line(capsys.readouterr().err)
    assert str(blocker) in line


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS, errno.EACCES])
def test_write_error_without_a_file_name_names_the_output(tmp_path, capsys, monkeypatch, code):
    """A full disk (or a filesystem gone read-only) while writing, simulated: fsync fails with
    ``code``, as write/flush do; the error has no file name of its own."""

    def failing_fsync(fd):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(os, "fsync", failing_fsync)
    out = tmp_path / "info.json"
    assert main(["info", "--out", str(out)]) == 1
    line = _one_error_line(capsys.readouterr().err)
    assert str(out) in line and os.strerror(code) in line
    monkeypatch.undo()
    assert list(tmp_path.iterdir()) == []  # nothing half-written left


def test_temporary_file_of_a_killed_writer_is_removed_by_the_next_write(tmp_path):
    target = tmp_path / "scan.bedgraph"
    code = (
        "import os, signal, sys\n"
        "from biocnn.io.atomic import atomic_open\n"
        "with atomic_open(sys.argv[1], 'w') as fh:\n"
        "    fh.write('half')\n"
        "    fh.flush()\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    writer = subprocess.Popen([sys.executable, "-c", code, str(target)])
    assert writer.wait(timeout=120) == -signal.SIGKILL
    left = [p.name for p in tmp_path.iterdir()]
    assert len(left) == 1 and left[0].startswith(f".scan.bedgraph.tmp-{atomic._HOST}-{writer.pid}.")
    # Left alone: a live writer's file, another machine's (its PIDs mean nothing here), other hidden files.
    keep = [
        f".scan.bedgraph.tmp-{atomic._HOST}-{os.getppid()}.abc.bedgraph",
        f".scan.bedgraph.tmp-{'0' * 8 if atomic._HOST != '0' * 8 else '1' * 8}-{writer.pid}.abc.bedgraph",
        ".scan.bedgraph.notes",
    ]
    for name in keep:
        (tmp_path / name).write_text("")
    write_json(tmp_path / "other.json", {"ok": 1})  # the first write of this process into the folder
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*keep, "other.json"])


def test_verbose_logging_leaves_out_matplotlib_font_messages(tmp_path):
    code = (
        "import sys\n"
        "from biocnn.cli import main\n"
        "main(['-v', 'info'])\n"
        "import matplotlib\n"
        "matplotlib.use('Agg')\n"
        "import matplotlib.pyplot as plt\n"
        "plt.figure(); plt.title('x'); plt.savefig(sys.argv[1] + '/x.png')\n"
    )
    run = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert (tmp_path / "x.png").is_file()
    assert "findfont" not in run.stderr and "DEBUG matplotlib" not in run.stderr and "DEBUG PIL" not in run.stderr


# ----------------------------------------------------------------------------- user mistakes
def _classifier_dir(path: Path) -> Path:
    spec = {"name": "classifier", "spatial_dims": 2, "in_channels": 1, "channels": [4, 8], "hidden": [4]}
    return save_model(path, build_model(spec), {"model": spec})


def test_a_model_of_another_task_is_named_not_an_attribute_error(tmp_path):
    model_dir = _classifier_dir(tmp_path / "mammo_model")
    with pytest.raises(CheckpointError, match=r"mammo_model: holds a mammography classifier, not a DeepBind"):
        load_model(model_dir, expect="deepbind")
    model, _ = load_model(model_dir, expect="classifier")
    assert model.__class__.__name__ == "Classifier"


def test_a_mammography_model_given_to_segment_predict_is_one_line(tmp_path, capsys):
    model_dir = _classifier_dir(tmp_path / "mammo_model")
    (tmp_path / "in").mkdir()
    argv = ["segment", "predict", "--model", str(model_dir), "--input", str(tmp_path / "in")]
    assert main([*argv, "--out", str(tmp_path / "out")]) == 1
    assert "holds a mammography classifier, not a segmentation (U-Net) model" in _one_error_line(
        capsys.readouterr().err
    )


@pytest.mark.parametrize("mode,channels", [("RGB", 3), ("RGBA", 3), ("LA", 1), ("L", 1)])
@pytest.mark.parametrize("size", [(1, 1), (2, 3), (4, 4)])
def test_tiny_images_are_read_as_2d_images(tmp_path, mode, channels, size):
    path = tmp_path / "tiny.png"
    Image.new(mode, size).save(path)
    assert read_image(path).shape == (channels, size[1], size[0])


# ----------------------------------------------------------------------------- segment predict batches
def _tumor_model(path: Path) -> Path:
    """An untrained 3D U-Net model directory (no training needed to check the batch handling)."""
    cfg = validate_config(
        {
            "data": {
                "train": "unused",
                "spatial_dims": 3,
                "in_channels": 4,
                "modalities": list(MODALITIES),
                "label_values": [0, 1, 2, 4],
                "patch_size": [16, 16, 16],
            },
            "model": {"channels": [4, 8], "norm": "instance", "decoder_dropout": [0.3]},
            "inference": {"roi_size": [16, 16, 16], "mc_samples": 2, "mc_batch": 2},
        },
        SegmentConfig,
    )
    torch.manual_seed(0)
    spec = model_spec(cfg)
    config = {"model": spec, "data": cfg.data.model_dump(), "inference": cfg.inference.model_dump()}
    return save_model(path, build_model(spec), config)


@pytest.fixture(scope="module")
def tumor_model(tmp_path_factory):
    return _tumor_model(tmp_path_factory.mktemp("model") / "tumor")


def _predict(model: Path, cases: Path, out: Path) -> tuple[int, dict]:
    rc = main(["segment", "predict", "--model", str(model), "--input", str(cases), "--out", str(out)])
    return rc, json.loads((out / "predict.json").read_text())


def test_bad_cases_are_failures_and_the_rest_is_predicted(tmp_path, tumor_model, capsys):
    cases = tmp_path / "cases"
    write_tumor(cases, 3, seed=1, shape=(16, 16, 16))
    (cases / "case_001" / "case_001_flair.nii.gz").unlink()  # a missing modality
    Image.new("L", (8, 8)).save(cases / "stray.png")  # a 2D image among the NIfTI cases
    rc, info = _predict(tumor_model, cases, tmp_path / "out")
    assert rc == 1
    failed = {f["case"]: f["error"] for f in info["failures"]}
    assert set(failed) == {"case_001", "stray"}
    assert "case_001_flair.nii.gz" in failed["case_001"] and "2D image" in failed["stray"]
    assert info["inputs_seen"] == 4 and info["outputs_written"] == 2
    assert (tmp_path / "out" / "case_000_label.nii.gz").is_file()
    assert (tmp_path / "out" / "case_002_label.nii.gz").is_file()
    assert "2 of 4 inputs predicted" in capsys.readouterr().out


def test_overflowing_intensities_are_a_failure_not_an_empty_segmentation(tmp_path, tumor_model):
    cases = tmp_path / "cases"
    write_tumor(cases, 2, seed=2, shape=(16, 16, 16))
    for mod in MODALITIES:  # finite float32 values near its limit: the normalisation overflows
        path = cases / "case_001" / f"case_001_{mod}.nii.gz"
        img = nib.load(str(path))
        data = np.asarray(img.dataobj, dtype=np.float32)
        scaled = (data / max(float(np.abs(data).max()), 1e-6) * 3e38).astype(np.float32)
        assert np.isfinite(scaled).all()
        nib.save(nib.Nifti1Image(scaled, img.affine), str(path))
    rc, info = _predict(tumor_model, cases, tmp_path / "out")
    assert rc == 1 and info["outputs_written"] == 1
    assert [f["case"] for f in info["failures"]] == ["case_001"]
    assert "not finite" in info["failures"][0]["error"]
    assert not (tmp_path / "out" / "case_001_label.nii.gz").exists()


def test_case_ids_become_safe_file_names_that_evaluate_finds(tmp_path, tumor_model):
    cases = tmp_path / "cases"
    write_tumor(cases, 1, seed=3, shape=(16, 16, 16))
    odd = "-case 1"  # a leading dash and a space: both kept out of output names
    (cases / odd).mkdir()
    for f in (cases / "case_000").iterdir():
        f.rename(cases / odd / f.name.replace("case_000", odd))
    (cases / "case_000").rmdir()
    rc, info = _predict(tumor_model, cases, tmp_path / "out")
    assert rc == 0 and info["outputs_written"] == 1
    names = sorted(p.name for p in (tmp_path / "out").iterdir() if p.name.endswith(".nii.gz"))
    safe = safe_component(odd)
    assert safe != odd and names == sorted(f"{safe}_{m}.nii.gz" for m in ("label", "prob", "entropy", "mutual_info"))
    metrics = tmp_path / "metrics.json"
    argv = ["segment", "evaluate", "--pred", str(tmp_path / "out"), "--labels", str(cases), "--out", str(metrics)]
    assert main(argv) == 0
    assert json.loads(metrics.read_text())["cases"] == 1


def test_unwritable_output_stops_segment_predict_before_any_work(tmp_path, tumor_model, capsys, monkeypatch):
    import biocnn.segment.predict as predict_module

    def no_model(*args, **kwargs):
        raise AssertionError("models were loaded before the output was checked")

    monkeypatch.setattr(predict_module, "Segmenter", no_model)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    argv = ["segment", "predict", "--model", str(tumor_model), "--input", str(tmp_path), "--out", str(blocker / "o")]
    assert main(argv) == 1
    assert "output folder is not writable" in _one_error_line(capsys.readouterr().err)


def test_two_images_with_one_case_id_are_a_failure_not_overwritten_outputs(tmp_path):
    from biocnn.segment.data import find_cases

    for name in ("a.png", "a.tif", "b.png"):
        Image.new("RGB", (8, 8)).save(tmp_path / name)
    failures = []
    cases = find_cases(tmp_path, 2, failures=failures)
    assert [c.id for c in cases] == ["a", "b"] and [c.images[0].name for c in cases] == ["a.png", "b.png"]
    assert failures == [{"case": "a.tif", "error": f"{tmp_path / 'a.tif'}: the same case id 'a' as a.png"}]


def test_a_one_pixel_image_is_a_failure_with_its_size(tmp_path):
    from biocnn.segment.data import Case, read_case_2d

    Image.new("RGB", (1, 1)).save(tmp_path / "one.png")
    with pytest.raises(InputError, match=r"one\.png: case one: image is 1 x 1 pixels; at least 2 x 2 needed"):
        read_case_2d(Case("one", [tmp_path / "one.png"]), 3)
    Image.new("RGB", (2, 3)).save(tmp_path / "two.png")
    assert read_case_2d(Case("two", [tmp_path / "two.png"]), 3)[0].shape == (3, 3, 2)


def test_staging_folder_of_a_killed_many_model_scan_is_removed_by_the_next_write(tmp_path):
    code = (
        "import os, signal, sys\n"
        "from biocnn.io.atomic import temporary_dir\n"
        "staging = temporary_dir(sys.argv[1], 'scan')\n"
        "(staging / 'D00001.001.bedgraph').write_text('half')\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    writer = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)])
    assert writer.wait(timeout=120) == -signal.SIGKILL
    left = [p for p in tmp_path.iterdir()]
    assert len(left) == 1 and left[0].is_dir() and left[0].name.startswith(f".scan.tmp-{atomic._HOST}-{writer.pid}.")
    write_json(tmp_path / "scan.json", {"ok": 1})  # the next write of a process into the folder
    assert [p.name for p in tmp_path.iterdir()] == ["scan.json"]
