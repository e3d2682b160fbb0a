"""nnU-Net v2 as a peer: its raw dataset format, its planning and preprocessing, training for the
budget (:mod:`nnunet_budget`) and its own inference, each step a command in the peers' Python.

The raw dataset (``nnUNet_raw/Dataset<ID>_<name>``): nuclei as single-channel 8-bit PNGs (the
grey values biocnn reads; nnU-Net's natural-image reader), BRATS as the original NIfTI volumes
linked under nnU-Net's names (``<case>_0000.nii.gz`` FLAIR, ``_0001`` T1c) with the label map
rewritten as integers. nnU-Net learns the label values themselves (BRATS 0-4); the regions are
formed from its label maps by the shared evaluation, as for every other method.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from peers.cases import Dataset, label_suffix, read_case, write_label

HERE = Path(__file__).resolve().parent
DATASET_IDS = {"nuclei": 501, "brats": 502}
CONFIGURATIONS = {"nuclei": "2d", "brats": "3d_fullres"}


def environment(work: Path) -> dict[str, str]:
    """nnU-Net's three folders under ``work``, one augmentation worker beside the training process."""
    env = dict(os.environ)
    for name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        env[name] = str(work / name)
        (work / name).mkdir(parents=True, exist_ok=True)
    env["nnUNet_n_proc_DA"] = "1"
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _write_image(case, dataset: Dataset, folder: Path) -> list[Path]:
    """The case's inputs under nnU-Net's names in ``folder``; returns their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    if dataset.spatial_dims == 2:
        image, _, _ = read_case(case, dataset)
        path = folder / f"{case.id}_0000.png"
        # biocnn read the 8-bit grey values scaled to [0, 1]: back to the same 8-bit values.
        write_label(path, np.rint(image[0] * 255))
        return [path]
    paths = []
    for i, src in enumerate(case.images):
        path = folder / f"{case.id}_{i:04d}.nii.gz"
        path.unlink(missing_ok=True)
        path.symlink_to(Path(src).resolve())
        paths.append(path)
    return paths


def write_raw_dataset(cases, dataset: Dataset, raw: Path) -> Path:
    """``raw/Dataset<ID>_<name>`` with imagesTr, labelsTr and dataset.json."""
    folder = raw / f"Dataset{DATASET_IDS[dataset.name]}_{dataset.name}"
    for case in cases:
        _write_image(case, dataset, folder / "imagesTr")
        _, label, ref = read_case(case, dataset)
        write_label(folder / "labelsTr" / f"{case.id}{label_suffix(dataset)}", label, ref)
    description = {
        "channel_names": {str(i): name for i, name in enumerate(dataset.channel_names)},
        "labels": {name: value for name, value in zip(dataset.label_names, dataset.label_values)},
        "numTraining": len(cases),
        "file_ending": label_suffix(dataset),
    }
    (folder / "dataset.json").write_text(json.dumps(description, indent=1))
    return folder


def _run(cmd: list[str], env: dict[str, str], log: Path) -> float:
    """Run ``cmd`` with its output in ``log``; returns its wall-clock seconds."""
    start = time.perf_counter()
    with open(log, "w") as fh:
        done = subprocess.run(cmd, env=env, stdout=fh, stderr=subprocess.STDOUT)
    if done.returncode:
        tail = log.read_text().strip().splitlines()[-5:]
        raise RuntimeError(f"{Path(cmd[0]).name} {' '.join(cmd[1:3])} failed (log {log}): {' | '.join(tail)}")
    return time.perf_counter() - start


def run(
    train_cases,
    test_cases,
    dataset: Dataset,
    work: Path,
    budget: float,
    python: str,
    iterations_per_epoch: int,
    mirroring: bool = False,
) -> tuple[dict[str, Path], dict]:
    """Train nnU-Net for ``budget`` seconds on ``train_cases`` and predict ``test_cases``.

    Returns the predicted label maps (case id -> file) and what was measured.
    """
    env = environment(work)
    ident, configuration = DATASET_IDS[dataset.name], CONFIGURATIONS[dataset.name]
    start = time.perf_counter()
    write_raw_dataset(train_cases, dataset, work / "nnUNet_raw")
    convert_seconds = time.perf_counter() - start
    bin_dir = Path(python).parent
    preprocess_seconds = _run(
        [
            str(bin_dir / "nnUNetv2_plan_and_preprocess"),
            "-d",
            str(ident),
            "-c",
            configuration,
            "-np",
            "2",
            "-npfp",
            "2",
            "--verify_dataset_integrity",
        ],
        env,
        work / "plan_and_preprocess.log",
    )
    script = str(HERE / "nnunet_budget.py")
    common = ["--dataset-id", str(ident), "--configuration", configuration]
    info_path = work / "train.json"
    _run(
        [python, script, "train", *common, "--budget-seconds", str(budget)]
        + ["--iterations-per-epoch", str(iterations_per_epoch), "--out", str(info_path)],
        env,
        work / "train.log",
    )
    info = json.loads(info_path.read_text())
    inputs, predictions = [], {}
    for case in test_cases:
        files = _write_image(case, dataset, work / "imagesTs") if dataset.spatial_dims == 2 else case.images
        out = work / "pred" / case.id
        inputs.append({"files": [str(Path(f).resolve()) for f in files], "output": str(out)})
        predictions[case.id] = out.with_name(case.id + label_suffix(dataset))
    (work / "pred").mkdir(exist_ok=True)
    (work / "inputs.json").write_text(json.dumps(inputs, indent=1))
    predict_seconds = _run(
        [python, script, "predict", *common, "--train-info", str(info_path), "--inputs", str(work / "inputs.json")]
        + (["--mirroring"] if mirroring else []),
        env,
        work / "predict.log",
    )
    info.update(
        configuration=configuration,
        convert_seconds=convert_seconds,
        preprocess_seconds=preprocess_seconds,
        predict_seconds=predict_seconds,
        mirroring=mirroring,
    )
    return predictions, info


def available(python: str) -> str | None:
    """None when ``python`` can run nnU-Net v2, else why not."""
    probe = "import nnunetv2, importlib.metadata as m; print(m.version('nnunetv2'))"
    done = subprocess.run([python, "-c", probe], capture_output=True, text=True)
    if done.returncode:
        return f"nnunetv2 not importable with {python}: {done.stderr.strip().splitlines()[-1:]}"
    if not (Path(python).parent / "nnUNetv2_plan_and_preprocess").exists():
        return f"nnUNetv2_plan_and_preprocess not found beside {python}"
    return None


if __name__ == "__main__":
    sys.exit("run through benchmarks/segment_real.py")
