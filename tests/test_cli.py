"""The command line: help for every task and verb, one-line errors without tracebacks."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from biocnn.cli import build_parser, main


def _run(*args):
    return subprocess.run([sys.executable, "-m", "biocnn", *args], capture_output=True, text=True, timeout=120)


def test_top_level_help_lists_tasks_and_verbs():
    run = _run("--help")
    assert run.returncode == 0
    for task in ("mammo", "segment", "deepbind"):
        assert task in run.stdout
    assert "tasks and their verbs:" in run.stdout


def _verbs():
    parser = build_parser()
    (tasks,) = parser._subparsers._group_actions
    for task, sub in tasks.choices.items():
        if sub._subparsers is None:
            yield (task,)
            continue
        for verb in sub._subparsers._group_actions[0].choices:
            yield (task, verb)


@pytest.mark.parametrize("words", list(_verbs()), ids=lambda w: " ".join(w))
def test_every_verb_has_help(words, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([*words, "--help"])
    assert exit_.value.code == 0
    assert "usage: biocnn" in capsys.readouterr().out


def test_info_writes_json(tmp_path):
    out = tmp_path / "env.json"
    assert main(["info", "--out", str(out)]) == 0
    info = json.loads(out.read_text())
    assert info["device"] in ("cpu", "cuda:0") and "torch" in info["versions"]


def test_unknown_task_is_a_usage_error():
    run = _run("radiology", "train")
    assert run.returncode == 2 and "invalid choice" in run.stderr


def test_bad_config_is_one_line_naming_the_key(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  epochs: 3\n  learning_rate: 0.1\n")
    run = _run("segment", "train", "--config", str(bad), "--out", str(tmp_path / "model"))
    assert run.returncode == 1
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in run.stderr
    assert lines[0].startswith("biocnn: error: ") and str(bad) in lines[0] and "train.learning_rate" in lines[0]
    assert not (tmp_path / "model").exists()


def test_missing_input_file_is_one_line_error(tmp_path):
    run = _run(
        "deepbind",
        "evaluate",
        "--model",
        str(tmp_path / "no_model"),
        "--test",
        str(tmp_path / "absent.seq.gz"),
        "--out",
        str(tmp_path / "m.json"),
    )
    assert run.returncode == 1 and "Traceback" not in run.stderr
    assert len(run.stderr.strip().splitlines()) == 1 and "biocnn: error:" in run.stderr


def test_every_train_verb_takes_the_budget_and_refuses_a_zero_one(tmp_path, capsys):
    config = tmp_path / "c.yaml"
    config.write_text("{}\n")
    for task in ("mammo", "segment", "deepbind"):
        args = build_parser().parse_args([task, "train", "--config", str(config), "--out", "m", "--max-seconds", "300"])
        assert (args.max_seconds, args.max_steps) == (300.0, None)
        with pytest.raises(SystemExit) as exit_:
            build_parser().parse_args([task, "train", "--config", str(config), "--out", "m", "--max-seconds", "0"])
        assert exit_.value.code == 2 and "--max-seconds: must be above 0" in capsys.readouterr().err


def test_deepbind_train_max_steps_reaches_the_trainer(tmp_path):
    rng = __import__("random").Random(0)
    rows = [f"A\tpeak{i}\t{''.join(rng.choice('ACGT') for _ in range(40))}\t1" for i in range(40)]
    table = tmp_path / "train.seq"
    table.write_text("FoldID\tEventID\tseq\tBound\n" + "\n".join(rows) + "\n")
    out = tmp_path / "model"
    config = Path(__file__).parents[1] / "configs" / "deepbind_demo.yaml"
    argv = ["deepbind", "train", "--config", str(config), "--train", str(table), "--out", str(out)]
    assert main([*argv, "--max-steps", "3"]) == 0  # 72 training sequences, batches of 64: 2 steps per epoch
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["stopped"] == "max_steps" and metrics["steps_done"] == 3 and metrics["epochs_done"] == 2
