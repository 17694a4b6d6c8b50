"""Fixtures of the CLI tests."""

from __future__ import annotations

import pytest

from lrmil.infer.testing import make_tiny_run


@pytest.fixture
def tiny_run(tmp_path, monkeypatch, tiny_lr_model):
    """A run folder whose student is the tiny model (load_student patched): the CLI's success
    path without training anything."""
    return make_tiny_run(tmp_path, monkeypatch, tiny_lr_model)
