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
