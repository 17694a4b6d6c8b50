"""Atomic writes: the final name appears only when the write completed."""

from __future__ import annotations

import pytest

from lrmil.utils.atomic import atomic_path, atomic_write_text


def test_success_renames_into_place(tmp_path):
    final = tmp_path / "out.txt"
    final.write_text("old")
    with atomic_path(final) as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".out.txt.tmp-")
        tmp.write_text("new")
        assert final.read_text() == "old"  # untouched until the write completes
    assert final.read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


@pytest.mark.parametrize("error", [ValueError, KeyboardInterrupt])
def test_failure_leaves_nothing_behind(tmp_path, error):
    final = tmp_path / "out.h5"
    with pytest.raises(error), atomic_path(final) as tmp:
        tmp.write_text("half")
        raise error()
    assert list(tmp_path.iterdir()) == []


def test_atomic_write_text(tmp_path):
    atomic_write_text(tmp_path / "a.csv", "slide,error\n")
    assert (tmp_path / "a.csv").read_text() == "slide,error\n"


def test_a_failed_write_names_the_output(tmp_path):
    """A full disk: write() raises ENOSPC naming no file (Pillow, h5py), the rename names the
    hidden temporary file; the error names the output. An error about another file (a read
    inside the writer) keeps its own name."""
    import errno
    import os

    final = tmp_path / "out.png"
    with pytest.raises(OSError) as raised, atomic_path(final) as tmp:
        tmp.write_text("half")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    assert str(raised.value) == f"[Errno 28] No space left on device: '{final}'"
    with pytest.raises(FileNotFoundError) as raised, atomic_path(final) as tmp:
        raise FileNotFoundError(errno.ENOENT, "No such file or directory", str(tmp))
    assert raised.value.filename == str(final)
    with pytest.raises(PermissionError) as raised, atomic_path(final):
        raise PermissionError(errno.EACCES, "Permission denied", "/data/input.h5")
    assert raised.value.filename == "/data/input.h5"
    assert list(tmp_path.iterdir()) == []
