"""Tiny tiled cohorts on synthetic slides, written once per session, for the encoder tests that
go through `lrmil embed` and stage 1."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_tiled(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """ROOT/tiled/coords/*.h5 of 8 synthetic 768 x 768 slides at 64 px (27 LR, 313 HR patches;
    one slide has no tissue) and ROOT/labels.csv of the 7 with patches (3 negative)."""
    from lrmil.synth import make_cohort
    from lrmil.tiling import TilingConfig, read_coords, tile_slides

    root = tmp_path_factory.mktemp("tiny_tiled")
    make_cohort(root / "cohort", n_slides=8, seed=0, width=768, height=768)
    tile_slides([root / "cohort" / "slides"], root / "tiled", TilingConfig(patch_size=64))
    with (root / "cohort" / "labels.csv").open(newline="") as fh:
        rows = [r for r in csv.DictReader(fh)
                if len(read_coords(root / "tiled" / "coords" / f"{r['slide']}.h5").coords)]
    (root / "labels.csv").write_text(
        "slide,patient,label\n" + "".join(f"{r['slide']},{r['patient']},{r['label']}\n"
                                          for r in rows))
    return root


@pytest.fixture(scope="session")
def two_slides_tiled(tiny_tiled: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """TILED/coords of two of them (5 LR, 56 HR patches): for the models that are slow here."""
    tiled = tmp_path_factory.mktemp("two_slides") / "tiled"
    (tiled / "coords").mkdir(parents=True)
    for name in ("slide_0000", "slide_0005"):
        shutil.copy2(tiny_tiled / "tiled" / "coords" / f"{name}.h5", tiled / "coords")
    return tiled
