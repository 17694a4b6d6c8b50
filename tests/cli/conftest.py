"""Fixtures of the CLI tests."""

from __future__ import annotations

import json

import pytest


@pytest.fixture
def tiny_run(tmp_path, monkeypatch, tiny_lr_model):
    """A run folder whose student is the tiny model (load_student patched): the CLI's success
    path without training anything."""
    from types import SimpleNamespace

    import lrmil.distill
    from lrmil import __version__

    encoder, head, meta = tiny_lr_model
    run = tmp_path / "tiny_run"
    (run / "fold_1").mkdir(parents=True)
    (run / "fold_1" / "student.safetensors").write_bytes(b"weights")
    config = {"versions": {"lrmil": __version__}, "class_names": meta.class_names,
              "patch_size": meta.patch_size, "lr_magnification": meta.magnification}
    (run / "config.json").write_text(json.dumps(config))
    student = SimpleNamespace(name=meta.encoder, dim=meta.feature_dim,
                              preprocess=encoder.preprocess, model=encoder.model)
    monkeypatch.setattr(lrmil.distill, "load_student",
                        lambda run, fold=None: (student, head.mil, config))
    return run
