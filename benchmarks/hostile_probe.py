"""Hostile-input probe (issue 22): bad inputs and faults, each run through the real ``biocnn``
command line (or ``snakemake -n``) as a user would, with a verdict per probe.

    python benchmarks/hostile_probe.py [--keep DIR] [--only NAME ...]

Builds everything in a temporary folder (tiny untrained models: the probes test the handling
of inputs, not accuracy) and prints a table ``probe | result | verdict``; exits 1 if any
verdict is FAIL. Verdicts: PASS (the promised behaviour), FAIL, SKIP (could not be set up
here, with the reason). Runs in a few minutes on 2 CPU cores.

What is promised (see the docs on batch commands): one line ``biocnn: error: ...`` naming the file or flag for a
user's mistake (never a traceback); every input of a batch either written, or listed as a
failure with its reason; outputs stay inside their folder; the output never depends on how
the work was cut into batches.

The mammography probes cover ``mammo score``'s paths, folder walk and flags; concurrency and
resume are checked in ``tests/test_mammo_score.py``, where a run can be stopped mid-way.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
TRACEBACK = "Traceback (most recent call last)"


# ----------------------------------------------------------------------------- running commands
def run_biocnn(*args: str, timeout: float = 300, env: dict | None = None) -> subprocess.CompletedProcess:
    """``python -m biocnn ARGS`` in a subprocess (the installed command line, as a user runs it)."""
    return subprocess.run(
        [sys.executable, "-m", "biocnn", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


def one_line_error(run: subprocess.CompletedProcess, *needles: str) -> tuple[str, bool]:
    """(result text, ok) for a run that must fail with one ``biocnn: error:`` line holding ``needles``."""
    lines = [line for line in run.stderr.splitlines() if line.startswith("biocnn: error:")]
    if TRACEBACK in run.stderr:
        return "traceback: " + run.stderr.strip().splitlines()[-1][:100], False
    if run.returncode == 0 or len(lines) != 1:
        return f"rc {run.returncode}, {len(lines)} error lines: {run.stderr.strip()[-100:]}", False
    missing = [n for n in needles if n not in lines[0]]
    return lines[0][:140], not missing


# ----------------------------------------------------------------------------- tiny models and data
def tumor_model(path: Path) -> Path:
    """An untrained 3D U-Net model directory (BraTS-like: four modalities)."""
    return _segment_model(
        path,
        {
            "train": "unused",
            "spatial_dims": 3,
            "in_channels": 4,
            "modalities": ["t1", "t1ce", "t2", "flair"],
            "label_values": [0, 1, 2, 4],
            "patch_size": [16, 16, 16],
        },
        [16, 16, 16],
    )


def malaria_model(path: Path) -> Path:
    """An untrained 2D U-Net model directory (RGB microscopy)."""
    return _segment_model(
        path,
        {"train": "unused", "spatial_dims": 2, "in_channels": 3, "label_values": [0, 1], "patch_size": [32, 32]},
        [32, 32],
    )


def _segment_model(path: Path, data: dict, roi: list[int]) -> Path:
    import torch

    from biocnn.checkpoint import save_model
    from biocnn.config import validate_config
    from biocnn.models import build_model
    from biocnn.segment.config import SegmentConfig
    from biocnn.segment.train import model_spec

    cfg = validate_config(
        {
            "data": data,
            "model": {"channels": [4, 8], "decoder_dropout": [0.3]},
            "inference": {"roi_size": roi, "mc_samples": 2, "mc_batch": 2},
        },
        SegmentConfig,
    )
    torch.manual_seed(0)
    spec = model_spec(cfg)
    return save_model(
        path, build_model(spec), {"model": spec, "data": cfg.data.model_dump(), "inference": cfg.inference.model_dump()}
    )


def classifier_model(path: Path) -> Path:
    """An untrained mammography view classifier directory."""
    from biocnn.checkpoint import save_model
    from biocnn.models import build_model

    spec = {"name": "classifier", "spatial_dims": 2, "in_channels": 1, "channels": [4, 8], "hidden": [4]}
    return save_model(path, build_model(spec), {"model": spec})


def deepbind_model(path: Path) -> Path:
    """An untrained DeepBind model directory (motif length 9, trained-length 50)."""
    import torch

    from biocnn.checkpoint import save_model
    from biocnn.deepbind.model import DeepBind

    torch.manual_seed(0)
    model = DeepBind(num_motifs=4, motif_len=9, hidden=8)
    spec = {"name": "deepbind", "num_motifs": 4, "motif_len": 9, "hidden": 8}
    return save_model(path, model, {"model": spec, "input_length": 50})


def genome(n: int, seed: int) -> str:
    return "".join(np.random.default_rng(seed).choice(list("ACGT"), size=n))


def write_fasta(path: Path, records: dict[str, str]) -> Path:
    with open(path, "w") as fh:
        for name, seq in records.items():
            fh.write(f">{name}\n")
            for i in range(0, len(seq), 80):
                fh.write(seq[i : i + 80] + "\n")
    return path


# ----------------------------------------------------------------------------- the probes
def _wait_for_rows(journal: Path, n: int, timeout: float = 120) -> None:
    """Wait until a running ``mammo score`` has journalled ``n`` finished rows."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if journal.is_file() and journal.read_text().count("\n") >= n:
            return
        time.sleep(0.05)


class Probes:
    """Each ``probe_*`` method returns ``(result, ok)``; setup is shared and built lazily."""

    def __init__(self, root: Path):
        self.root = root
        self._cache: dict = {}

    def _once(self, key: str, make: Callable):
        if key not in self._cache:
            self._cache[key] = make()
        return self._cache[key]

    @property
    def tumor(self) -> Path:
        return self._once("tumor", lambda: tumor_model(self.root / "models" / "tumor"))

    @property
    def malaria(self) -> Path:
        return self._once("malaria", lambda: malaria_model(self.root / "models" / "malaria"))

    @property
    def mammo(self) -> Path:
        return self._once("mammo", lambda: classifier_model(self.root / "models" / "mammo"))

    @property
    def deepbind(self) -> Path:
        return self._once("deepbind", lambda: deepbind_model(self.root / "models" / "deepbind"))

    def _cases(self, name: str, n: int, seed: int) -> Path:
        from biocnn.synthetic.tumor import write_tumor

        out = self.root / name
        write_tumor(out, n, seed=seed, shape=(16, 16, 16))
        return out

    def _predict(self, cases: Path, out: Path, model: Path | None = None, *extra: str):
        run = run_biocnn("segment", "predict", "--model", model or self.tumor, "--input", cases, "--out", out, *extra)
        info = json.loads((out / "predict.json").read_text()) if (out / "predict.json").is_file() else None
        return run, info

    # -- segment predict
    def probe_segment_missing_modality_and_stray_png(self):
        from PIL import Image

        cases = self._cases("cases_bad", 3, 1)
        (cases / "case_001" / "case_001_flair.nii.gz").unlink()
        Image.new("L", (8, 8)).save(cases / "stray.png")
        run, info = self._predict(cases, self.root / "pred_bad")
        if info is None or TRACEBACK in run.stderr:
            return one_line_error(run)[0], False
        failed = sorted(f["case"] for f in info["failures"])
        counts = (
            f"{info['outputs_written']} written + {len(failed)} failures ({', '.join(failed)}) of {info['inputs_seen']}"
        )
        return counts, failed == ["case_001", "stray"] and info["outputs_written"] == 2 and info["inputs_seen"] == 4

    def probe_segment_float32_limit_intensities(self):
        import nibabel as nib

        cases = self._cases("cases_huge", 2, 2)
        for mod in ("t1", "t1ce", "t2", "flair"):
            path = cases / "case_001" / f"case_001_{mod}.nii.gz"
            img = nib.load(str(path))
            data = np.asarray(img.dataobj, np.float32)
            nib.save(
                nib.Nifti1Image((data / max(float(np.abs(data).max()), 1e-6) * 3e38).astype(np.float32), img.affine),
                str(path),
            )
        run, info = self._predict(cases, self.root / "pred_huge")
        if info is None:
            return one_line_error(run)[0], False
        errors = [f["error"] for f in info["failures"] if f["case"] == "case_001"]
        written = (self.root / "pred_huge" / "case_001_label.nii.gz").exists()
        return (errors[0][-90:] if errors else f"no failure; label written: {written}"), bool(errors) and not written

    def probe_segment_odd_case_id(self):
        cases = self._cases("cases_odd", 1, 3)
        odd = cases / "-case 1"
        odd.mkdir()
        for f in (cases / "case_000").iterdir():
            f.rename(odd / f.name.replace("case_000", "-case 1"))
        (cases / "case_000").rmdir()
        run, info = self._predict(cases, self.root / "pred_odd")
        names = sorted(p.name for p in (self.root / "pred_odd").glob("*_label.nii.gz"))
        ok = run.returncode == 0 and len(names) == 1 and not names[0].startswith("-") and " " not in names[0]
        return f"rc {run.returncode}, {names}", ok

    def probe_segment_output_under_a_file(self):
        blocker = self.root / "a_file"
        blocker.write_text("x")
        return one_line_error(
            run_biocnn("segment", "predict", "--model", self.tumor, "--input", self.root, "--out", blocker / "o"),
            str(blocker),
        )

    def probe_segment_read_only_filesystem(self):
        target = Path("/proc/biocnn-probe/out")  # /proc takes no new folders, whoever runs this
        return one_line_error(
            run_biocnn("segment", "predict", "--model", self.tumor, "--input", self.root, "--out", target),
            "/proc/biocnn-probe",
        )

    def probe_segment_tiny_png(self):
        from PIL import Image

        folder = self.root / "tiny"
        folder.mkdir()
        Image.new("RGB", (1, 1), (200, 10, 10)).save(folder / "one.png")
        run, info = self._predict(folder, self.root / "pred_tiny", self.malaria)
        if info is None:
            return one_line_error(run)[0], False
        text = json.dumps(info["failures"])
        ok = "3D volume" not in text and "1 x 1 pixels" in text and TRACEBACK not in run.stderr
        return f"{info['outputs_written']} written, failures {text[-90:]}", ok

    def probe_mammo_model_to_segment_predict(self):
        return one_line_error(
            run_biocnn("segment", "predict", "--model", self.mammo, "--input", self.root, "--out", self.root / "p_m"),
            "mammography",
        )

    def probe_verbose_has_no_matplotlib_debug(self):
        from PIL import Image

        folder = self.root / "verbose"
        folder.mkdir()
        Image.new("RGB", (40, 40), (200, 10, 10)).save(folder / "a.png")
        run = run_biocnn(
            "-v", "segment", "predict", "--model", self.malaria, "--input", folder, "--out", self.root / "p_v"
        )
        noisy = [line for line in run.stderr.splitlines() if "DEBUG matplotlib" in line or "DEBUG PIL" in line]
        return f"rc {run.returncode}, {len(noisy)} matplotlib/PIL debug lines", run.returncode == 0 and not noisy

    # -- mammo score
    def _mammo_scorer(self) -> Path:
        """A tiny view classifier with an operating point: enough for ``mammo score``."""
        from biocnn.checkpoint import save_model
        from biocnn.models import build_model

        def make():
            spec = {"name": "classifier", "spatial_dims": 2, "channels": [4, 8], "strides": [2, 2], "hidden": [4]}
            path = self.root / "models" / "mammo_scorer"
            save_model(path, build_model(spec), {"model": spec, "input": {"height": 32, "width": 24}})
            (path / "operating_point.json").write_text(json.dumps({"threshold": 0.5, "calibration": None}))
            return path

        return self._once("mammo_scorer", make)

    def _views(self, folder: Path, n: int, **uids) -> Path:
        """``n`` small MG files (the DICOM writer of the tests), with the given UIDs."""
        import warnings

        sys.path.insert(0, str(REPO / "tests"))
        from test_mammo_dicom import encoded, ramp_image, write

        folder.mkdir(parents=True, exist_ok=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # invalid UIDs are the point
            for i in range(n):
                write(folder, f"v{i}.dcm", *encoded(ramp_image(), 0), laterality="LR"[i % 2], view="CC", **uids)
        return folder

    def probe_mammo_score_uids_that_escape(self):
        folder = self._views(self.root / "mg_escape", 4, StudyInstanceUID="../../../esc", SOPInstanceUID="/tmp/esc")
        out = self.root / "mg_escape_out"
        run = run_biocnn(
            "mammo",
            "score",
            "--model",
            self._mammo_scorer(),
            "--input",
            folder,
            "--out",
            out,
            "--keep-ids",
            "--heatmaps",
        )
        pngs = sorted(out.rglob("*.png"))
        outside = [p for p in self.root.rglob("esc*") if out not in p.parents] + list(Path("/tmp").glob("esc*.png"))
        ok = run.returncode == 0 and len(pngs) == 4 and not outside and TRACEBACK not in run.stderr
        return f"rc {run.returncode}, {len(pngs)} heatmaps for 4 images, {len(outside)} files outside", ok

    def probe_mammo_score_self_referencing_link(self):
        folder = self._views(self.root / "mg_loop", 2)
        os.symlink(folder, folder / "loop")
        (folder / "sub").mkdir()
        os.symlink(folder / "missing", folder / "sub" / "broken")
        out = self.root / "mg_loop_out"
        run = run_biocnn("mammo", "score", "--model", self._mammo_scorer(), "--input", folder, "--out", out)
        if TRACEBACK in run.stderr or not (out / "summary.json").is_file():
            return one_line_error(run)[0], False
        summary = json.loads((out / "summary.json").read_text())
        failures = (out / "failures.csv").read_text()
        # every entry accounted for: 2 views scored, the broken link a failure, the loop skipped
        ok = run.returncode == 0 and summary["scored"] == 2 and "sub/broken" in failures and summary["skipped"] == 1
        return f"scored {summary['scored']}, failed {summary['failed']}, skipped {summary['skipped']}", ok

    def _score_cmd(self, folder: Path, out: Path, *extra: str) -> list[str]:
        model = self._mammo_scorer()
        return [
            sys.executable,
            "-m",
            "biocnn",
            "mammo",
            "score",
            "--model",
            str(model),
            "--input",
            str(folder),
            "--out",
            str(out),
            "--batch-size",
            "2",
        ]

    def probe_mammo_score_two_runs_at_once(self):
        folder = self._views(self.root / "mg_many", 4)
        out = self.root / "mg_many_out"
        out.mkdir()
        # Another process holds the folder the way a running `mammo score` does (tests/test_mammo_score
        # races two real runs); this run must be refused with one line and leave the folder alone.
        holder = subprocess.Popen(
            [
                sys.executable,
                "-c",
                "import sys, time; from biocnn.io.journal import output_lock\n"
                "with output_lock(sys.argv[1], 'mammo score'):\n    print('held', flush=True); time.sleep(120)",
                str(out),
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            holder.stdout.readline()  # "held"
            second = subprocess.run(self._score_cmd(folder, out), capture_output=True, text=True, timeout=300)
        finally:
            holder.kill()
            holder.wait()
        result, refused = one_line_error(second, str(out))
        return result, refused and not (out / "scores.csv").exists()

    def probe_mammo_score_killed_run_resumes(self):
        folder = self._views(self.root / "mg_kill", 120)
        out, clean = self.root / "mg_kill_out", self.root / "mg_kill_clean"
        run = subprocess.Popen(self._score_cmd(folder, out), stderr=subprocess.DEVNULL)
        _wait_for_rows(out / ".progress.jsonl", 10)
        run.send_signal(signal.SIGKILL)
        run.wait()
        again = subprocess.run(self._score_cmd(folder, out), capture_output=True, text=True, timeout=300)
        subprocess.run(self._score_cmd(folder, clean), capture_output=True, text=True, timeout=300)
        if again.returncode != 0 or not (out / "summary.json").is_file():
            return one_line_error(again)[0], False
        resumed = json.loads((out / "summary.json").read_text())["this_run"]["resumed"]

        def probabilities(d):  # pseudonyms differ between output folders (each has its key)
            lines = (d / "scores.csv").read_text().splitlines()
            return sorted(",".join(c for i, c in enumerate(line.split(",")) if i not in (1, 2)) for line in lines)

        same = probabilities(out) == probabilities(clean)
        return f"resumed {resumed} rows, final table == a clean run's: {same}", 0 < resumed < 120 and same

    def probe_mammo_score_batch_size_zero(self):
        run = run_biocnn(
            "mammo",
            "score",
            "--model",
            self._mammo_scorer(),
            "--input",
            self.root,
            "--out",
            self.root / "mg_b0",
            "--batch-size",
            "0",
        )
        ok = run.returncode != 0 and "--batch-size" in run.stderr and TRACEBACK not in run.stderr
        return f"rc {run.returncode}, {run.stderr.strip().splitlines()[-1][:100]}", ok

    def probe_mammo_score_bad_operating_point(self):
        import shutil

        model = self.root / "models" / "mammo_bad_op"
        shutil.copytree(self._mammo_scorer(), model)
        (model / "operating_point.json").write_text('{"threshold": 7}')
        folder = self._views(self.root / "mg_op", 1)
        return one_line_error(
            run_biocnn("mammo", "score", "--model", model, "--input", folder, "--out", self.root / "mg_op_out"),
            "operating_point.json",
        )

    # -- deepbind
    def probe_scan_chunk_independent(self):
        fa = write_fasta(self.root / "chunks.fa", {"r1": genome(1030, 1), "r2": genome(1035, 2), "r3": genome(40, 3)})
        outs = []
        for chunk in (200, 1_000_000):
            prefix = self.root / f"chunk{chunk}"
            run = run_biocnn(
                "deepbind",
                "scan",
                "--model",
                self.deepbind,
                "--fasta",
                fa,
                "--out",
                prefix,
                "--window",
                50,
                "--stride",
                20,
                "--chunk",
                chunk,
            )
            if run.returncode:
                return one_line_error(run)[0], False
            outs.append(Path(f"{prefix}.bedgraph").read_bytes())
        rows = [out.count(b"\n") for out in outs]
        return f"{rows[0]} vs {rows[1]} rows", outs[0] == outs[1]

    def probe_scan_duplicate_record_names(self):
        fa = write_fasta(self.root / "dup.fa", {"chr1": genome(300, 1), "chr2": genome(300, 2)})
        with open(fa, "a") as fh:
            fh.write(">chr1 again\n" + genome(300, 3) + "\n")
        return one_line_error(
            run_biocnn("deepbind", "scan", "--model", self.deepbind, "--fasta", fa, "--out", self.root / "dup"),
            "'chr1'",
        )

    def probe_scan_n_only_windows(self):
        fa = write_fasta(self.root / "n.fa", {"c": genome(500, 1) + "N" * 400 + genome(500, 2)})
        prefix = self.root / "nscan"
        run = run_biocnn(
            "deepbind",
            "scan",
            "--model",
            self.deepbind,
            "--fasta",
            fa,
            "--out",
            prefix,
            "--window",
            50,
            "--stride",
            25,
            "--threshold",
            -1e9,
        )
        if run.returncode:
            return one_line_error(run)[0], False
        stats = json.loads(Path(f"{prefix}.json").read_text())
        inside_n = [
            r
            for r in Path(f"{prefix}.bedgraph").read_text().splitlines()
            if 525 <= int(r.split("\t")[1]) and int(r.split("\t")[2]) <= 875
        ]
        skipped = stats.get("uninformative_windows")
        return f"{skipped} uninformative windows, {len(inside_n)} rows inside the N run", bool(skipped) and not inside_n

    def probe_scan_mammo_model(self):
        fa = write_fasta(self.root / "m.fa", {"c": genome(300, 1)})
        return one_line_error(
            run_biocnn("deepbind", "scan", "--model", self.mammo, "--fasta", fa, "--out", self.root / "m"),
            str(self.mammo),
            "mammography",
        )

    def probe_variants_mammo_model(self):
        fa = write_fasta(self.root / "ref.fa", {"chr1": genome(1000, 1)})
        vcf = self.root / "v.vcf"
        vcf.write_text(
            "##fileformat=VCFv4.2\n#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO\nchr1\t500\t.\tA\tC\t.\t.\t.\n"
        )
        run = run_biocnn(
            "deepbind", "variants", "--model", self.mammo, "--vcf", vcf, "--reference", fa, "--out", self.root / "v.tsv"
        )
        return one_line_error(run, str(self.mammo), "mammography")

    def probe_variants_position_past_the_end(self):
        seq = genome(1000, 1)
        fa = write_fasta(self.root / "ref2.fa", {"chr1": seq})
        vcf = self.root / "far.vcf"
        vcf.write_text(
            "##fileformat=VCFv4.2\n#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO\n"
            f"chr1\t500\tok\t{seq[499]}\tN\t.\t.\t.\nchr1\t5000000\tfar\tA\tC\t.\t.\t.\n"
        )
        out = self.root / "far.tsv"
        run = run_biocnn(
            "deepbind",
            "variants",
            "--model",
            self.deepbind,
            "--vcf",
            vcf,
            "--reference",
            fa,
            "--out",
            out,
            "--flank",
            20,
        )
        if not out.is_file():
            return one_line_error(run)[0], False
        note = [line for line in out.read_text().splitlines() if "\tfar\t" in line]
        text = note[0].split("\t")[-1] if note else "no row"
        return text[:100], bool(note) and "is outside chr1" in text and "within" not in text

    def probe_killed_scan_leaves_no_stale_temp(self):
        fa = write_fasta(self.root / "big.fa", {f"c{i}": genome(2_000_000, i) for i in range(10)})
        prefix = self.root / "killed"
        cmd = [
            sys.executable,
            "-m",
            "biocnn",
            "deepbind",
            "scan",
            "--model",
            str(self.deepbind),
            "--fasta",
            str(fa),
            "--out",
            str(prefix),
        ]
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline, temps = time.time() + 120, []
        while time.time() < deadline and proc.poll() is None and not temps:
            temps = list(self.root.glob(".killed.bedgraph.tmp-*"))
            time.sleep(0.01)
        if not temps:
            proc.kill()
            proc.wait()
            return "the scan ended before a temporary file was seen", None
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        small = write_fasta(self.root / "small.fa", {"c": genome(500, 1)})
        run = run_biocnn("deepbind", "scan", "--model", self.deepbind, "--fasta", small, "--out", prefix)
        left = list(self.root.glob(".killed.*tmp-*"))
        return (
            f"{len(temps)} temporary file(s) after SIGKILL, {len(left)} after the next run",
            run.returncode == 0 and not left,
        )

    # -- workflow
    def _dry_run(self, config: dict, task_yaml: tuple[str, str] | None = None):
        import yaml

        if task_yaml is not None:
            path = self.root / task_yaml[0]
            path.write_text(task_yaml[1])
        cfg = self.root / "wf.yaml"
        cfg.write_text(yaml.safe_dump(config))
        return subprocess.run(
            [sys.executable, "-m", "snakemake", "-n", "--nolock", "--cores", "1", "--configfile", str(cfg)],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=300,
        )

    def probe_workflow_unknown_key_in_task_config(self):
        text = (REPO / "configs" / "segment_malaria.yaml").read_text().replace("train:\n", "train:\n  epochz: 3\n", 1)
        config = {
            "results": str(self.root / "wf"),
            "tasks": ["segment"],
            "segment": {"kinds": ["malaria"], "malaria": {"config": str(self.root / "bad_task.yaml")}},
        }
        run = self._dry_run(config, ("bad_task.yaml", text))
        out = run.stdout + run.stderr
        said = "names the key" if "epochz" in out else out.strip()[-80:]
        return f"rc {run.returncode}, {said}", run.returncode != 0 and "epochz" in out

    def probe_workflow_experiment_name_escapes(self):
        config = {
            "results": str(self.root / "wf"),
            "tasks": ["deepbind"],
            "deepbind": {"experiments": {"../../escape": {"motif": "MA0139"}}},
        }
        run = self._dry_run(config)
        out = run.stdout + run.stderr
        return (
            f"rc {run.returncode}, {'names it' if '../../escape' in out else out.strip()[-80:]}",
            run.returncode != 0 and "../../escape" in out,
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", help="build in this folder and keep it (default: a temporary one)")
    parser.add_argument("--only", nargs="*", help="run only the probes whose name contains one of these")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="biocnn-probe-") as tmp:
        root = Path(args.keep or tmp)
        root.mkdir(parents=True, exist_ok=True)
        probes = Probes(root)
        todo = [(name[len("probe_") :], getattr(probes, name)) for name in dir(probes) if name.startswith("probe_")]
        if args.only:
            todo = [(n, f) for n, f in todo if any(o in n for o in args.only)]
        rows = []
        for name, probe in todo:
            start = time.perf_counter()
            try:
                result, ok = probe()
            except Exception as exc:  # a probe that cannot run is a finding too
                result, ok = f"probe crashed: {type(exc).__name__}: {exc}"[:140], False
            verdict = "SKIP" if ok is None else "PASS" if ok else "FAIL"
            rows.append((name, result.replace("\n", " "), verdict, time.perf_counter() - start))
            print(f"{verdict:<5} {name} ({rows[-1][3]:.1f} s)", file=sys.stderr)
    width = max(len(r[0]) for r in rows)
    print(f"| {'probe':<{width}} | result | verdict |")
    print(f"|{'-' * (width + 2)}|--------|---------|")
    for name, result, verdict, _ in rows:
        print(f"| {name:<{width}} | {result} | {verdict} |")
    failed = sum(r[2] == "FAIL" for r in rows)
    print(f"\n{len(rows)} probes: {len(rows) - failed - sum(r[2] == 'SKIP' for r in rows)} PASS, {failed} FAIL")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
