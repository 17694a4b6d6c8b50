"""`tile_slides(..., lr_grid=DIR)`: CLAM's and TRIDENT's coords files (written here as those
tools write them) as the LR grid of a real slide, the HR children derived as for lrmil's own."""

from __future__ import annotations

import os
from pathlib import Path

import h5py
import numpy as np
import pytest

from lrmil.tiling import TilingConfig, read_coords, tile_slides
from lrmil.tiling.grid import child_coords

CONFIG = TilingConfig(patch_size=64)  # 5x LR patches of 256 px at level 0 on a 20x scan


def _trident(folder: Path, name: str, coords: np.ndarray, **attrs: object) -> Path:
    """As TRIDENT's coords_to_h5: JOB/<mag>x_<size>px_0px_overlap/patches/<name>_patches.h5."""
    path = folder / "patches" / f"{name}_patches.h5"
    path.parent.mkdir(parents=True, exist_ok=True)
    values = {"patch_size": 64, "patch_size_level0": 64 * 20 // 5, "level0_magnification": 20,
              "target_magnification": 5, "overlap": 0, "name": name,
              "savetodir": str(folder), "level0_width": 2220, "level0_height": 2967, **attrs}
    with h5py.File(path, "w") as f:
        f.create_dataset("coords", data=np.asarray(coords, dtype=np.int64)).attrs.update(
            {k: v for k, v in values.items() if v is not None})
    return path


def _clam(folder: Path, name: str, coords: np.ndarray, patch_size: int = 256) -> Path:
    """As CLAM's create_patches_fp (save_hdf5: chunks of one row, resizable), patch_level 0."""
    path = folder / f"{name}.h5"
    folder.mkdir(parents=True, exist_ok=True)
    data = np.asarray(coords, dtype=np.int64)
    with h5py.File(path, "w") as f:
        dset = f.create_dataset("coords", shape=data.shape, maxshape=(None, 2), chunks=(1, 2),
                                dtype=data.dtype)
        dset[:] = data
        dset.attrs.update({"patch_size": patch_size, "patch_level": 0, "downsample": (1.0, 1.0),
                           "downsampled_level_dim": (2220, 2967), "level_dim": (2220, 2967),
                           "name": name, "save_path": str(folder)})
    return path


@pytest.fixture(scope="module")
def own(real_slide_path, tmp_path_factory):
    """lrmil's own tiling of the real slide: (output folder, TiledSlide)."""
    out = tmp_path_factory.mktemp("own")
    tile_slides([real_slide_path], out, CONFIG)
    return out, read_coords(out / "coords" / f"{real_slide_path.stem}.h5")


def _same_tiles(a, b) -> None:
    for field in ("coords", "tissue", "hr_coords", "hr_valid"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field), err_msg=field)
    for field in ("lr_patch_size_level0", "hr_patch_size_level0", "lr_mag", "hr_mag", "r",
                  "patch_size", "slide_dimensions", "config"):
        assert getattr(a, field) == getattr(b, field), field


@pytest.mark.parametrize("tool", ["TRIDENT", "CLAM"])
def test_lrmil_own_grid_given_back_gives_lrmil_own_coords(tool, own, real_slide_path, tmp_path):
    _, mine = own
    name = real_slide_path.stem
    grids = tmp_path / "grids"
    source = (_trident if tool == "TRIDENT" else _clam)(grids, name, mine.coords)
    summary = tile_slides([real_slide_path], tmp_path / "out", CONFIG, lr_grid=grids)
    assert [r.status for r in summary.results] == ["ok"], summary.results
    coords_path = tmp_path / "out" / "coords" / f"{name}.h5"
    _same_tiles(read_coords(coords_path), mine)
    assert (tmp_path / "out" / "thumbnails" / f"{name}.png").is_file()
    with h5py.File(coords_path) as f:
        assert f.attrs["lr_grid"] == tool
        assert f.attrs["lr_grid_path"] == str(source.resolve())
        assert f.attrs["lr_grid_size"] == source.stat().st_size
    with h5py.File(own[0] / "coords" / f"{name}.h5") as f:
        assert f.attrs["lr_grid"] == "lrmil"


def test_every_given_position_is_kept_in_order_with_its_children(real_slide_path, tmp_path):
    """A grid lrmil would not make (shifted half a patch, overlapping, background included):
    every position stays, in the file's order, as the tool's own feature files follow them."""
    coords = np.array([[128, 128], [0, 0], [1900, 2600], [256, 128], [1000, 1000]])
    _trident(tmp_path / "grids", real_slide_path.stem, coords, overlap=128)
    tile_slides([real_slide_path], tmp_path / "out", CONFIG, lr_grid=tmp_path / "grids")
    tiled = read_coords(tmp_path / "out" / "coords" / f"{real_slide_path.stem}.h5")
    np.testing.assert_array_equal(tiled.coords, coords)
    np.testing.assert_array_equal(tiled.hr_coords, child_coords(coords, 4, 64))
    assert tiled.hr_valid.shape == (5, 16) and tiled.tissue.shape == (5,)


def test_a_forty_x_trident_grid_is_taken_within_the_tolerance(real_slide_path, tmp_path):
    """TRIDENT's level-0 side can differ from lrmil's by rounding of the magnifications (an
    objective power of 40 on a 0.2527-mpp scan): within 2% and divisible by r it is used as
    it is, its children of side S0 / r."""
    coords = np.array([[0, 0], [260, 0]])
    _trident(tmp_path / "grids", real_slide_path.stem, coords, patch_size_level0=260)
    tile_slides([real_slide_path], tmp_path / "out", CONFIG, lr_grid=tmp_path / "grids")
    tiled = read_coords(tmp_path / "out" / "coords" / f"{real_slide_path.stem}.h5")
    assert (tiled.lr_patch_size_level0, tiled.hr_patch_size_level0) == (260, 65)
    np.testing.assert_array_equal(tiled.hr_coords, child_coords(coords, 4, 65))


def test_a_rerun_skips_and_a_changed_grid_file_is_redone(own, real_slide_path, tmp_path):
    _, mine = own
    grids = tmp_path / "grids"
    source = _clam(grids, real_slide_path.stem, mine.coords)
    out = tmp_path / "out"
    tile_slides([real_slide_path], out, CONFIG, lr_grid=grids)
    again = tile_slides([real_slide_path], out, CONFIG, lr_grid=grids)
    assert [r.status for r in again.results] == ["skipped"]
    stat = source.stat()
    os.utime(source, (stat.st_atime, stat.st_mtime + 10))
    redone = tile_slides([real_slide_path], out, CONFIG, lr_grid=grids)
    assert [r.status for r in redone.results] == ["ok"]
    own_grid = tile_slides([real_slide_path], out, CONFIG)  # lrmil's own grid now: redone
    assert [r.status for r in own_grid.results] == ["ok"]
