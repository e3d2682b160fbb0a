"""The command line: help for every task and verb, one-line errors without tracebacks."""

import json
import subprocess
import sys

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
