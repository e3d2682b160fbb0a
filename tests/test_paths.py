"""Paths built from file contents stay inside their output folder; unwritable outputs fail early."""

from __future__ import annotations

import errno
import os

import pytest

from biocnn.errors import InputError
from biocnn.io.paths import ensure_writable_dir, inside, safe_component

HOSTILE = [
    "../../../x",
    "/etc/passwd",
    "..",
    ".",
    "",
    ".hidden",
    "-rf",
    "a/b",
    "a\\b",
    "a\x00b",
    "a\nb",
    "trailing.",
    "CON",
    "nul.txt",
    "x" * 500,
    "Müller",
    "a b",
]


@pytest.mark.parametrize("text", HOSTILE)
def test_safe_component_is_one_plain_file_name(text, tmp_path):
    name = safe_component(text)
    assert name and len(name) <= 100
    assert "/" not in name and "\\" not in name and name not in (".", "..")
    assert not name.startswith((".", "-")) and not name.endswith(".")
    assert all(c.isascii() and c.isprintable() and c != " " for c in name)
    assert name != text  # each of these needed a change
    # Usable as a file name right here.
    (tmp_path / name).write_text("ok")
    assert [p.name for p in tmp_path.iterdir()] == [name]


@pytest.mark.parametrize("text", ["1.2.840.10008.5.1.4", "PAT-001", "BraTS_2021_00001", "chr1", "case.v2"])
def test_safe_component_keeps_plain_names(text):
    assert safe_component(text) == text


def test_safe_component_keeps_distinct_inputs_distinct():
    inputs = HOSTILE + ["a_b", "a?b", "a*b", "a_b~", "x" * 501, "x" * 499 + "y", "_.._.._x", "../../x"]
    names = [safe_component(t) for t in inputs]
    assert len(set(names)) == len(set(inputs))
    # A changed name carries a mark that no unchanged name has, so a crafted plain name cannot collide.
    assert safe_component(safe_component("a/b")) != safe_component("a/b")
    assert safe_component("a/b") == safe_component("a/b")  # and the mapping is stable


def test_inside_accepts_children_and_refuses_escapes(tmp_path):
    root = tmp_path / "out"
    root.mkdir()
    assert inside(root, "a", "b.png") == root / "a" / "b.png"
    assert inside(root, "a/../b.png") == root / "a/../b.png"
    for parts in (["../x.png"], ["/etc/passwd"], ["a", "..", "..", "x"], [str(tmp_path / "elsewhere")]):
        with pytest.raises(InputError, match="outside the output folder"):
            inside(root, *parts)
    # A symbolic link inside the folder that points out of it is an escape too.
    (root / "link").symlink_to(tmp_path)
    with pytest.raises(InputError, match="outside the output folder"):
        inside(root, "link", "x.png")
    # Sanitised components always stay inside.
    for text in HOSTILE:
        assert inside(root, safe_component(text), safe_component(text) + ".png").parent.parent == root


def test_ensure_writable_dir_creates_and_leaves_nothing(tmp_path):
    out = ensure_writable_dir(tmp_path / "new" / "out")
    assert out.is_dir() and list(out.iterdir()) == []


def test_ensure_writable_dir_refuses_a_path_under_a_file(tmp_path):
    # Tests run as root, where a chmod 555 folder stays writable: a file in the way fails for everyone.
    blocker = tmp_path / "file"
    blocker.write_text("x")
    for target in (blocker, blocker / "out"):
        with pytest.raises(InputError, match="output folder is not writable"):
            ensure_writable_dir(target)


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS, errno.EACCES])
def test_ensure_writable_dir_reports_write_errors(tmp_path, monkeypatch, code):
    """A full disk or read-only filesystem, simulated: the probe file's write fails with ``code``."""

    def failing_write(fd, data):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(os, "write", failing_write)
    with pytest.raises(InputError, match=os.strerror(code)) as info:
        ensure_writable_dir(tmp_path)
    assert str(tmp_path) in str(info.value)
    monkeypatch.undo()
    assert list(tmp_path.iterdir()) == []  # the probe file was removed
