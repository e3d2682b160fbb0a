"""``biocnn mammo score`` against a hostile folder: paths from file contents stay inside the
output folder, one writer at a time, a killed run resumes, write errors and user mistakes are
one line, and every entry of the input is scored, listed as a failure or counted as skipped."""

from __future__ import annotations

import csv
import errno
import json
import math
import os
import signal
import subprocess
import sys
import textwrap
import time
import warnings
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch
from test_mammo_dicom import encoded, ramp_image, write

import biocnn.mammo.score as score_mod
from biocnn.checkpoint import save_model
from biocnn.cli import main
from biocnn.errors import BiocnnError, InputError
from biocnn.io.journal import output_lock
from biocnn.mammo.platt import calibrated_probs
from biocnn.mammo.report import build_report
from biocnn.mammo.score import exam_table, load_key, score
from biocnn.models import build_model

SPEC = {"name": "classifier", "spatial_dims": 2, "channels": [4, 8], "strides": [2, 2], "hidden": [4], "pool": "max"}


def tiny_model(path: Path, threshold: float = 0.5, calibration: dict | None = None) -> Path:
    """An untrained view classifier with an operating point: enough to run ``score``."""
    torch.manual_seed(0)
    save_model(path, build_model(SPEC), {"model": SPEC, "input": {"height": 32, "width": 24}, "aggregate": "mean"})
    (path / "operating_point.json").write_text(json.dumps({"threshold": threshold, "calibration": calibration}))
    return path


def view(folder: Path, name: str, laterality: str = "L", view_: str = "CC", **uids) -> Path:
    """A small MG file; ``uids`` set StudyInstanceUID, SOPInstanceUID, PatientID as given."""
    folder.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # invalid UIDs are the point of some tests
        return write(folder, name, *encoded(ramp_image(), 0), laterality=laterality, view=view_, **uids)


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def run_score(model: Path, source: Path, out: Path, *extra: str) -> int:
    return main(["mammo", "score", "--model", str(model), "--input", str(source), "--out", str(out), *extra])


# --------------------------------------------------------------------------- paths
@pytest.mark.filterwarnings("ignore:.*Invalid value for VR UI")
def test_heatmaps_stay_inside_the_output_folder_one_per_image(tmp_path):
    model = tiny_model(tmp_path / "model")
    studies = tmp_path / "in"
    outside = tmp_path / "outside"
    hostile = ["../../../escaped", str(outside), "..", ""]
    for i in range(8):
        # Every file carries the same hostile UIDs: names made of them alone would collide.
        uid = hostile[i % len(hostile)]
        view(studies, f"img{i}.dcm", StudyInstanceUID=uid, SOPInstanceUID=uid)
    for extra, out in ((["--keep-ids"], tmp_path / "a" / "b" / "kept"), ([], tmp_path / "a" / "b" / "pseudo")):
        assert run_score(model, studies, out, "--heatmaps", "--workers", "0", *extra) == 0
        rows = read_csv(out / "scores.csv")
        assert len(rows) == 8 and len({r["heatmap"] for r in rows}) == 8
        assert all((out / r["heatmap"]).is_file() and r["heatmap"].endswith(".png") for r in rows)
        assert all((out / r["heatmap"]).resolve().is_relative_to((out / "heatmaps").resolve()) for r in rows)
        assert len(list((out / "heatmaps").rglob("*.png"))) == 8
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert not [p for p in written if not {"in", "model", "kept", "pseudo"} & set(p.relative_to(tmp_path).parts)]
    assert not outside.exists()


def test_evaluate_writes_one_heatmap_per_requested_image(tmp_path):
    model = tiny_model(tmp_path / "model")
    data = tmp_path / "data"
    lines = ["path,patient_id,study_id,laterality,view,label"]
    for i in range(10):  # single-view files side by side in one folder, same laterality and view
        view(data, f"v{i}.dcm")
        lines.append(f"v{i}.dcm,P{i},S{i},L,{'../../x' if i == 0 else 'CC'},{int(i < 8)}")
    (data / "manifest.csv").write_text("\n".join(lines) + "\n")
    out = tmp_path / "eval"
    args = ["mammo", "evaluate", "--model", str(model), "--manifest", str(data / "manifest.csv"), "--out", str(out)]
    assert main([*args, "--heatmaps", "8"]) == 0
    assert len(list((out / "heatmaps").glob("*.png"))) == 8
    assert {p.parent for p in tmp_path.rglob("*.png")} == {out, out / "heatmaps"}


def test_report_copies_heatmaps_only_from_inside_the_scores_folder(tmp_path):
    (tmp_path / "secret.png").write_bytes(b"not for the report")
    evaluation, scores = tmp_path / "eval", tmp_path / "scores"
    evaluation.mkdir()
    scores.mkdir()
    (evaluation / "metrics.json").write_text("{}")
    (scores / "summary.json").write_text("{}")
    (scores / "scores.csv").write_text(
        "file,laterality,view,probability,flagged,heatmap\na.dcm,L,CC,0.9,1,../secret.png\n"
    )  # a tampered table
    with pytest.raises(InputError, match="outside"):
        build_report(evaluation, scores, tmp_path / "report")
    assert not (tmp_path / "report" / "gradcam_1.png").exists()


# --------------------------------------------------------------------------- one writer, resume, write errors
def test_a_second_writer_is_refused_with_one_line(tmp_path, capsys):
    model = tiny_model(tmp_path / "model")
    view(tmp_path / "in", "a.dcm")
    out = tmp_path / "out"
    out.mkdir()
    with output_lock(out, "biocnn mammo score"):  # another run holds the folder
        assert run_score(model, tmp_path / "in", out, "--workers", "0") == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and str(out) in err and "another" in err
    assert not (out / "scores.csv").exists()
    assert run_score(model, tmp_path / "in", out, "--workers", "0") == 0  # released: the next run goes


def test_pseudonym_key_is_created_once_when_two_runs_race(tmp_path, monkeypatch):
    monkeypatch.delenv("BIOCNN_PSEUDONYM_KEY", raising=False)
    key_path = tmp_path / ".pseudonym.key"
    real_is_file, real_exists = Path.is_file, Path.exists
    # Both runs look before either has written: each sees no key.
    monkeypatch.setattr(Path, "is_file", lambda p: False if p == key_path else real_is_file(p))
    monkeypatch.setattr(Path, "exists", lambda p: False if p == key_path else real_exists(p))
    first, second = load_key(tmp_path), load_key(tmp_path)
    assert first == second and len(first) >= 32
    assert sorted(p.name for p in tmp_path.iterdir()) == [".pseudonym.key"]  # no temporary left
    assert (key_path.stat().st_mode & 0o777) == 0o600


class Killed(Exception):
    """Stands for a kill: the run stops between two batches (a SIGKILL leaves the same journal)."""


def test_a_killed_run_resumes_and_ends_like_a_clean_run(tmp_path, monkeypatch):
    model = tiny_model(tmp_path / "model")
    source = tmp_path / "in"
    for i in range(8):
        view(
            source, f"img{i}.dcm", "L" if i % 2 else "R", "CC" if i % 4 < 2 else "MLO", StudyInstanceUID=f"1.2.{i // 4}"
        )
    (source / "zz_junk.dcm").write_bytes(b"\0" * 300)
    key = tmp_path / "key"
    key.write_text("k" * 32)
    options = dict(heatmaps=True, workers=0, batch_size=2, key_file=key, progress=False)
    clean = tmp_path / "clean"
    score(model, source, clean, **options)

    calls = {"n": 0}
    real = score_mod.calibrated_probs

    def killed_after_two_batches(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 2:
            raise Killed
        return real(*args, **kwargs)

    out = tmp_path / "out"
    monkeypatch.setattr(score_mod, "calibrated_probs", killed_after_two_batches)
    with pytest.raises(Killed):
        score(model, source, out, **options)
    monkeypatch.setattr(score_mod, "calibrated_probs", real)
    assert not (out / "scores.csv").exists()
    summary = score(model, source, out, **options)
    assert summary["this_run"]["resumed"] == 4
    assert summary["this_run"]["scored"] == 4 and summary["this_run"]["failed"] == 1
    for name in ("scores.csv", "exams.csv", "failures.csv"):
        assert (out / name).read_text() == (clean / name).read_text(), name
    assert summary["scored"] == 8 and summary["failed"] == 1
    assert not (out / score_mod.PROGRESS_FILE).exists()


def test_a_write_error_is_one_line_naming_the_file_and_nothing_is_lost(tmp_path, monkeypatch, capsys):
    model = tiny_model(tmp_path / "model")
    source = tmp_path / "in"
    for i in range(3):
        view(source, f"img{i}.dcm", StudyInstanceUID=f"1.2.{i}")
    out = tmp_path / "out"
    real = score_mod.atomic_open

    def disk_full(path, *args, **kwargs):
        if Path(path).name == "scores.csv":
            raise OSError(errno.ENOSPC, "No space left on device")  # no file name, as the kernel reports it
        return real(path, *args, **kwargs)

    monkeypatch.setattr(score_mod, "atomic_open", disk_full)
    assert run_score(model, source, out, "--workers", "0") == 1
    err = capsys.readouterr().err
    (line,) = [line for line in err.splitlines() if line.startswith("biocnn: error")]  # after the progress bar
    assert "Traceback" not in err and "scores.csv" in line and "No space left" in line
    monkeypatch.setattr(score_mod, "atomic_open", real)
    assert run_score(model, source, out, "--workers", "0") == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["this_run"]["scored"] == 0 and summary["this_run"]["resumed"] == 3 and summary["scored"] == 3


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_output_stops_before_scoring(tmp_path, capsys):
    model = tiny_model(tmp_path / "model")
    view(tmp_path / "in", "a.dcm")
    out = tmp_path / "out"
    out.mkdir()
    out.chmod(0o555)
    try:
        assert run_score(model, tmp_path / "in", out, "--workers", "0") == 1
    finally:
        out.chmod(0o755)
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and str(out) in err and "not writable" in err


# --------------------------------------------------------------------------- every entry accounted for
def test_every_entry_is_scored_failed_or_counted_as_skipped(tmp_path, monkeypatch):
    model = tiny_model(tmp_path / "model")
    root = tmp_path / "in"
    view(root / "study1", "a.dcm", StudyInstanceUID="1.2.1")
    view(tmp_path / "elsewhere" / "study2", "b.dcm", StudyInstanceUID="1.2.2")
    (root / "linked").symlink_to(tmp_path / "elsewhere" / "study2")  # a symlinked study folder
    (root / "loop").symlink_to(root)  # a link back to the top
    (root / "self").symlink_to(root / "self")  # a link to itself
    (root / "broken").symlink_to(tmp_path / "nowhere")
    view(root / "locked", "c.dcm")
    os.mkfifo(root / "pipe")  # reading it would block a decoder for ever
    (root / ".DS_Store").write_bytes(b"junk")
    real_scandir = os.scandir

    def scandir(path="."):
        if Path(path) == root / "locked":
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)  # root cannot make a folder unreadable with chmod
    out = tmp_path / "out"
    summary = score(model, root, out, workers=0, progress=False)
    scores = {r["file"] for r in read_csv(out / "scores.csv")}
    failures = {r["file"]: r["reason"] for r in read_csv(out / "failures.csv")}
    assert scores == {"study1/a.dcm", "linked/b.dcm"}
    assert set(failures) == {"self", "broken", "locked", "pipe"}
    assert "loop" in failures["self"] and "broken" in failures["broken"]
    assert "folder cannot be read" in failures["locked"] and "regular file" in failures["pipe"]
    assert summary["skipped"] == 2 and summary["skipped_reasons"] == {
        "hidden": 1,
        "a folder already walked (symbolic link loop or second link)": 1,
    }
    entries = {p.name for p in root.iterdir()}
    accounted = {f.split("/")[0] for f in scores | set(failures)} | {".DS_Store", "loop"}
    assert accounted == entries


# --------------------------------------------------------------------------- user mistakes
@pytest.mark.parametrize(
    "text",
    [
        "{not json",
        json.dumps({"calibration": None}),
        json.dumps({"threshold": "high"}),
        json.dumps({"threshold": 1.5}),
        json.dumps({"threshold": 0.5, "calibration": {"slope": 1.0}}),
        json.dumps({"threshold": 0.5, "calibration": {"slope": "x", "intercept": 0}}),
    ],
)
def test_a_bad_operating_point_is_one_line(tmp_path, capsys, text):
    model = tiny_model(tmp_path / "model")
    (model / "operating_point.json").write_text(text)
    view(tmp_path / "in", "a.dcm")
    assert run_score(model, tmp_path / "in", tmp_path / "out", "--workers", "0") == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "operating_point.json" in err


@pytest.mark.parametrize(
    "verb, flag, value",
    [
        ("score", "--batch-size", "0"),
        ("score", "--workers", "-1"),
        ("evaluate", "--workers", "-2"),
        ("evaluate", "--heatmaps", "-1"),
    ],
)
def test_bad_counts_are_refused_naming_the_flag(tmp_path, capsys, verb, flag, value):
    model = tiny_model(tmp_path / "model")
    manifest = tmp_path / "m.csv"
    manifest.write_text("path,patient_id,study_id,laterality,view,label\n")
    source = ["--input", str(tmp_path)] if verb == "score" else ["--manifest", str(manifest)]
    with pytest.raises(SystemExit) as exc:
        main(["mammo", verb, "--model", str(model), *source, "--out", str(tmp_path / "o"), flag, value])
    assert exc.value.code == 2
    assert f"argument {flag}" in capsys.readouterr().err


# --------------------------------------------------------------------------- flags agree across tables
def test_view_breast_and_exam_flags_agree_at_the_threshold(tmp_path):
    # Every image gets the same probability p, stored as the threshold, whose 6-decimal form
    # is below it: the image flags and the breast flags must still tell the same story.
    calibration = {"slope": 0.0, "intercept": math.log(0.5000004 / 0.4999996)}
    p = float(calibrated_probs(torch.zeros(1), calibration)[0])
    assert float(f"{p:.6f}") < p
    model = tiny_model(tmp_path / "model", threshold=p, calibration=calibration)
    for lat in "LR":
        for v in ("CC", "MLO"):
            view(tmp_path / "in", f"{lat}_{v}.dcm", lat, v, StudyInstanceUID="1.2.3")
    out = tmp_path / "out"
    score(model, tmp_path / "in", out, workers=0, progress=False)
    scores, exams = read_csv(out / "scores.csv"), read_csv(out / "exams.csv")
    for r in scores:
        assert int(r["flagged"]) == (Fraction(r["probability"]) >= Fraction(p))
    for b in exams:
        views = [int(r["flagged"]) for r in scores if r["laterality"] == b["laterality"]]
        assert int(b["breast_flagged"]) == views[0] == views[1]
        assert int(b["exam_flagged"]) == max(int(e["breast_flagged"]) for e in exams)


def test_breast_flag_follows_its_views_for_any_probabilities():
    rng = np.random.default_rng(0)
    for _ in range(2000):
        n = int(rng.integers(1, 5))
        probs = [f"{x:.6f}" for x in rng.uniform(0.4, 0.6, n)]
        threshold = float(rng.choice([float(x) for x in probs] + [float(rng.uniform(0.4, 0.6))]))
        rows = [
            {"study": "S", "patient": "P", "laterality": "L", "view": str(i), "probability": x}
            for i, x in enumerate(probs)
        ]
        for how in ("mean", "max"):
            (breast,) = exam_table(rows, how, threshold)
            flags = [Fraction(x) >= Fraction(threshold) for x in probs]
            if all(flags):
                assert breast["breast_flagged"] == 1
            if not any(flags):
                assert breast["breast_flagged"] == 0
            assert breast["breast_flagged"] == int(Fraction(breast["breast_probability"]) >= Fraction(threshold))


# --------------------------------------------------------------------------- decoding workers
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux only")
def test_decoding_workers_die_with_a_killed_run(tmp_path):
    model = tiny_model(tmp_path / "model")
    view(tmp_path / "in", "a.dcm")
    script = textwrap.dedent(
        f"""
        import os, sys, time
        import biocnn.mammo.data as data
        from biocnn.mammo.score import score

        def stuck(*args, **kwargs):  # a file that takes for ever to decode
            print(os.getpid(), flush=True)
            time.sleep(120)

        data.read_mammogram = stuck
        score({str(model)!r}, {str(tmp_path / "in")!r}, {str(tmp_path / "out")!r}, workers=1, progress=False)
        """
    )
    run = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    worker = None
    try:
        worker = int(run.stdout.readline())
        os.kill(run.pid, signal.SIGKILL)
        run.wait(30)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and _alive(worker):
            time.sleep(0.2)
        assert not _alive(worker), "the decoding worker outlived its parent"
    finally:
        if run.poll() is None:
            os.kill(run.pid, signal.SIGKILL)
        if worker is not None and _alive(worker):
            os.kill(worker, signal.SIGKILL)


def test_a_killed_decoding_worker_is_one_line_and_the_run_resumes(tmp_path, monkeypatch):
    import biocnn.mammo.data as data

    model = tiny_model(tmp_path / "model")
    view(tmp_path / "in", "a.dcm")
    monkeypatch.setattr(data, "read_mammogram", lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL))
    with pytest.raises(BiocnnError, match="decoding worker"):
        score(model, tmp_path / "in", tmp_path / "out", workers=1, progress=False)
    monkeypatch.undo()
    assert score(model, tmp_path / "in", tmp_path / "out", workers=1, progress=False)["scored"] == 1


def _alive(pid: int) -> bool:
    """Running (a zombie waiting for a reaper counts as dead)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
