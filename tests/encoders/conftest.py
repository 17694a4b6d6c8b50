"""Tiny tiled cohorts on synthetic slides, written once per session, for the encoder tests that
go through `lrmil embed` and stage 1."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import pytest


def _tiled_cohort(root: Path, n_slides: int) -> Path:
    """ROOT/tiled/coords/*.h5 of synthetic 768 x 768 slides tiled at 64 px, and ROOT/labels.csv
    of the slides with patches."""
    from lrmil.synth import make_cohort
    from lrmil.tiling import TilingConfig, read_coords, tile_slides

    make_cohort(root / "cohort", n_slides=n_slides, seed=0, width=768, height=768)
    tile_slides([root / "cohort" / "slides"], root / "tiled", TilingConfig(patch_size=64))
    with (root / "cohort" / "labels.csv").open(newline="") as fh:
        rows = [r for r in csv.DictReader(fh)
                if len(read_coords(root / "tiled" / "coords" / f"{r['slide']}.h5").coords)]
    (root / "labels.csv").write_text(
        "slide,patient,label\n" + "".join(f"{r['slide']},{r['patient']},{r['label']}\n"
                                          for r in rows))
    return root


@pytest.fixture(scope="session")
def tiny_tiled(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """8 slides (27 LR, 313 HR patches; 7 with patches, 3 of them negative)."""
    return _tiled_cohort(tmp_path_factory.mktemp("tiny_tiled"), 8)


@pytest.fixture(scope="session")
def stage1_tiled(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """12 slides (44 LR, 500 HR patches; 11 with patches, 5 negative, 10 patients): enough for
    2 folds with validation sets of both classes."""
    return _tiled_cohort(tmp_path_factory.mktemp("stage1_tiled"), 12)


@pytest.fixture(scope="session")
def two_slides_tiled(tiny_tiled: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """TILED/coords of two of them (5 LR, 56 HR patches): for the models that are slow here."""
    tiled = tmp_path_factory.mktemp("two_slides") / "tiled"
    (tiled / "coords").mkdir(parents=True)
    for name in ("slide_0000", "slide_0005"):
        shutil.copy2(tiny_tiled / "tiled" / "coords" / f"{name}.h5", tiled / "coords")
    return tiled
