"""The coords HDF5 of one slide (shared/spec/interfaces.md).

TRIDENT/CLAM-compatible at the top level: `coords` (N, 2) int64 with the attrs those tools
write; lrmil adds `tissue` (N,) and the HR children in `hr/coords` (N, K, 2) and `hr/valid`
(N, K); root attrs record versions, the slide (path, file size, mtime, dimensions), r and the
tiling settings. Files are written atomically."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from lrmil.errors import FileFormatError
from lrmil.info import versions
from lrmil.tiling.config import TilingConfig
from lrmil.tiling.foreign import GivenGrid, identify
from lrmil.tiling.tiler import SlideTiles
from lrmil.utils.atomic import atomic_path

FORMAT = "lrmil-coords/1"


@dataclass
class TiledSlide:
    name: str
    slide_path: str
    slide_size: int  # file size in bytes (with mtime: how resume knows the slide is unchanged)
    slide_mtime: float
    slide_dimensions: tuple[int, int]  # level-0 width, height
    coords: np.ndarray  # (N, 2) int64
    tissue: np.ndarray  # (N,) float32, LR tissue fraction
    hr_coords: np.ndarray  # (N, K, 2) int64
    hr_valid: np.ndarray  # (N, K) bool
    patch_size: int  # pixels at each magnification
    lr_patch_size_level0: int
    hr_patch_size_level0: int
    lr_mag: float
    hr_mag: float
    r: int
    level0_mag: float
    level0_mpp: float
    config: TilingConfig

    @property
    def k(self) -> int:
        return self.r * self.r

    def __len__(self) -> int:
        return len(self.coords)


def _patch_attrs(
    name: str, size: int, size0: int, level0_mag: float, target_mag: float, mpp: float
) -> dict[str, Any]:
    return {
        "patch_size": size,
        "patch_size_level0": size0,
        "level0_magnification": level0_mag,
        "target_magnification": target_mag,
        "level0_mpp": mpp,
        "overlap": 0,
        "name": name,
    }


def write_coords(
    path: Path,
    tiles: SlideTiles,
    *,
    name: str,
    slide_path: Path,
    slide_mpp: float,
    mpp_user: float | None,
    slide_dimensions: tuple[int, int],
    config: TilingConfig,
    given: GivenGrid | None = None,
) -> None:
    """`given`: the CLAM/TRIDENT file the LR grid came from, recorded in the root attrs
    (`lr_grid` = "lrmil" for lrmil's own grid)."""
    geo = tiles.geometry
    stat = slide_path.stat()
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        f.attrs.update(
            {
                "format": FORMAT,
                "lrmil_versions": json.dumps(versions()),
                "slide_path": str(slide_path.resolve()),
                "slide_size": stat.st_size,
                "slide_mtime": stat.st_mtime,
                "slide_dimensions": np.asarray(slide_dimensions, dtype=np.int64),
                "r": geo.r,
                # The user's mpp override (NaN: the slide's metadata), checked on resume.
                "mpp_user": np.nan if mpp_user is None else mpp_user,
                "tiling_config": json.dumps(config.to_dict(), sort_keys=True),
                "tissue_params": json.dumps(config.to_dict()["tissue"], sort_keys=True),
                **(given.root_attrs() if given is not None else {"lr_grid": "lrmil"}),
            }
        )
        lr = f.create_dataset("coords", data=tiles.coords.astype(np.int64).reshape(-1, 2))
        lr.attrs.update(
            _patch_attrs(name, geo.patch_size, geo.lr_size0, geo.level0_mag, geo.lr_mag, slide_mpp)
        )
        f.create_dataset("tissue", data=tiles.tissue.astype(np.float32))
        hr = f.create_group("hr")
        hr.attrs.update({"r": geo.r, "child_order": "k = v * r + u (column u, row v)"})
        hr_coords = tiles.hr_coords.astype(np.int64).reshape(-1, geo.k, 2)
        hr.create_dataset("coords", data=hr_coords).attrs.update(
            _patch_attrs(name, geo.patch_size, geo.hr_size0, geo.level0_mag, geo.hr_mag, slide_mpp)
        )
        valid = hr.create_dataset("valid", data=tiles.hr_valid.astype(bool).reshape(-1, geo.k))
        valid.attrs["child_threshold"] = config.child_threshold


def read_coords(path: str | Path) -> TiledSlide:
    """Read a coords file written by `lrmil tile`; FileFormatError names the file otherwise."""
    path = Path(path)
    if not path.is_file():
        raise FileFormatError(f"{path}: no such coords file")
    try:
        tiled = _read(path)
    except (OSError, KeyError, ValueError, TypeError) as exc:
        foreign = foreign_coords(path)
        if foreign:
            raise FileFormatError(f"{path}: {foreign}") from None
        raise FileFormatError(f"{path}: not a complete lrmil coords file ({exc})") from None
    if tiled.name != path.stem:
        # Outputs are named by the coords file: another slide's grid would be its features.
        raise FileFormatError(f"coords file {path} holds the grid of slide {tiled.name!r} "
                              f"({tiled.slide_path}), not of {path.stem!r}: coords files are "
                              "named <slide>.h5; run `lrmil tile` on the slide again")
    return tiled


def _read(path: Path) -> TiledSlide:
    with h5py.File(path, "r") as f:
        root, lr, hr = dict(f.attrs), f["coords"], f["hr"]
        return TiledSlide(
            name=str(lr.attrs["name"]),
            slide_path=str(root["slide_path"]),
            slide_size=int(root["slide_size"]),
            slide_mtime=float(root["slide_mtime"]),
            slide_dimensions=tuple(int(v) for v in root["slide_dimensions"]),
            coords=lr[()].astype(np.int64),
            tissue=f["tissue"][()],
            hr_coords=hr["coords"][()].astype(np.int64),
            hr_valid=hr["valid"][()].astype(bool),
            patch_size=int(lr.attrs["patch_size"]),
            lr_patch_size_level0=int(lr.attrs["patch_size_level0"]),
            hr_patch_size_level0=int(hr["coords"].attrs["patch_size_level0"]),
            lr_mag=float(lr.attrs["target_magnification"]),
            hr_mag=float(hr["coords"].attrs["target_magnification"]),
            r=int(root["r"]),
            level0_mag=float(lr.attrs["level0_magnification"]),
            level0_mpp=float(lr.attrs["level0_mpp"]),
            config=TilingConfig.from_dict(json.loads(root["tiling_config"])),
        )


def foreign_coords(path: Path) -> str | None:
    """What to tell a user whose coords file was written by CLAM or TRIDENT: None for any
    other file."""
    found = identify(path)
    if found is None:
        return None
    return (f"{found.describe()}, not lrmil's: lrmil needs the HR children of every LR patch, "
            "which these files lack; run `lrmil tile` on the slides, with `--lr-grid "
            f"{path.parent}` to keep this grid (CLAM/TRIDENT feature files are read as they "
            "are, see README 'Files')")
