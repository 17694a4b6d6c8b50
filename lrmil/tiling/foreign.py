"""CLAM's and TRIDENT's coords files: recognising them, and using their patch positions as
lrmil's LR grid (`lrmil tile --lr-grid DIR`) where they cover what an lrmil LR patch covers.

Both tools write a `coords` (N, 2) dataset of level-0 top-left corners. TRIDENT's attrs carry
`patch_size` at `target_magnification` and usually `patch_size_level0`, `level0_magnification`,
`level0_width/height`; CLAM's (create_patches_fp) carry `patch_size` at pyramid level
`patch_level` and that level's `downsample`, so its level-0 side is patch_size x downsample."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from lrmil.errors import FileFormatError
from lrmil.runner.identity import FileIdentity
from lrmil.tiling.grid import Geometry

# A grid is taken when its level-0 side is within this of lrmil's nominal LR side: TRIDENT's
# magnification comes from the objective power (40x), lrmil's from the mpp (0.2527 -> 39.6x).
SIDE_TOLERANCE = 0.02


@dataclass(frozen=True)
class ForeignCoords:
    """A CLAM or TRIDENT coords file, as its attrs describe it."""

    tool: str  # "CLAM" or "TRIDENT"
    path: Path
    n: int
    attrs: dict[str, Any]

    @property
    def patch_size(self) -> int:
        return int(self.attrs["patch_size"])

    def describe(self) -> str:
        if self.tool == "TRIDENT":
            where = f"{float(self.attrs['target_magnification']):g}x"
        else:
            where = f"level {int(self.attrs['patch_level'])}"
        return f"a {self.tool} coords file ({self.n} patches of {self.patch_size} px at {where})"


def identify(path: Path) -> ForeignCoords | None:
    """The file as CLAM/TRIDENT coords (a `coords` dataset with `patch_size` and
    `target_magnification` or `patch_level`, no lrmil HR grid), or None."""
    try:
        with h5py.File(path, "r") as f:
            if "coords" not in f or "hr" in f or not isinstance(f["coords"], h5py.Dataset):
                return None
            attrs, n = dict(f["coords"].attrs), f["coords"].shape[0]
    except OSError:
        return None
    if "patch_size" not in attrs:
        return None
    for tool, key in (("TRIDENT", "target_magnification"), ("CLAM", "patch_level")):
        if key in attrs:
            return ForeignCoords(tool, path, n, attrs)
    return None


def find_grid_file(folder: Path, name: str) -> Path:
    """The coords file of slide `name` in `folder`: CLAM writes patches/<name>.h5, TRIDENT
    patches/<name>_patches.h5; the folder itself or its patches/ subfolder is looked in."""
    names = (f"{name}.h5", f"{name}_patches.h5")
    for candidate in (folder / n for n in names):
        if candidate.is_file():
            return candidate
    for candidate in (folder / "patches" / n for n in names):
        if candidate.is_file():
            return candidate
    raise FileFormatError(
        f"--lr-grid {folder}: no coords file for slide {name} ({' or '.join(names)}, also "
        "under patches/)"
    )


@dataclass(frozen=True)
class GivenGrid:
    """LR patch positions from a CLAM/TRIDENT file, checked against one slide."""

    source: ForeignCoords
    identity: FileIdentity

    @classmethod
    def read(cls, path: Path) -> GivenGrid:
        found = identify(path)
        if found is None:
            raise FileFormatError(
                f"{path}: not a CLAM or TRIDENT coords file (a `coords` dataset with "
                "`patch_size` and `target_magnification` or `patch_level` attrs)"
            )
        return cls(found, FileIdentity.of(path))

    def root_attrs(self) -> dict[str, object]:
        """What a coords file made from this grid records of it."""
        return {"lr_grid": self.source.tool, **self.identity.attrs("lr_grid")}

    def _level0_side(self, level0_mag: float, level_downsamples: tuple[float, ...]) -> float:
        attrs = self.source.attrs
        if self.source.tool == "TRIDENT":
            if "patch_size_level0" in attrs:
                return float(attrs["patch_size_level0"])
            return self.source.patch_size * level0_mag / float(attrs["target_magnification"])
        level = int(attrs["patch_level"])
        if "downsample" in attrs:
            downsample = float(np.asarray(attrs["downsample"]).ravel()[0])
        elif 0 <= level < len(level_downsamples):
            downsample = level_downsamples[level]
        else:
            raise self._refused(f"patch_level {level} is not a level of the slide")
        # CLAM reads patch_size pixels at the level and steps by int(downsample) in level 0.
        return self.source.patch_size * int(downsample) * float(attrs.get("custom_downsample", 1))

    def _refused(self, why: str) -> FileFormatError:
        return FileFormatError(f"{self.source.path}: {self.source.describe()} cannot be the LR "
                               f"grid: {why}")

    def positions(self, geo: Geometry, level0_mag: float, dimensions: tuple[int, int],
                  level_downsamples: tuple[float, ...]) -> tuple[np.ndarray, Geometry]:
        """The LR corners (N, 2) int64 in the file's order and the geometry they imply.

        Taken when the file's level-0 patch side S0 is lrmil's LR side (patch_size x level-0
        magnification / lr_mag) within SIDE_TOLERANCE and divisible by r, so the r x r children
        of HR side S0 / r tile each patch exactly; every corner must lie inside the slide."""
        attrs, width, height = self.source.attrs, *dimensions
        file_mag = attrs.get("level0_magnification")
        if file_mag is not None and not math.isclose(float(file_mag), level0_mag, rel_tol=0.05):
            raise self._refused(f"it was made for a {float(file_mag):g}x level 0, the slide "
                                f"reads {level0_mag:.3g}x")
        made_for = (attrs.get("level0_width"), attrs.get("level0_height"))
        if None not in made_for and tuple(int(v) for v in made_for) != (width, height):
            raise self._refused(f"it was made for a {int(made_for[0])}x{int(made_for[1])} px "
                                f"slide, this one is {width}x{height}")
        side = self._level0_side(level0_mag, level_downsamples)
        nominal = geo.patch_size * level0_mag / geo.lr_mag
        if abs(side - nominal) > SIDE_TOLERANCE * nominal:
            raise self._refused(
                f"its patches cover {side:g} px of level 0, an lrmil LR patch "
                f"({geo.patch_size} px at {geo.lr_mag:g}x) covers {nominal:g}; match --lr-mag "
                "and --patch-size to the file"
            )
        side0 = round(side)
        if side0 % geo.r:
            raise self._refused(f"its level-0 side {side0} px is not divisible by r = {geo.r} "
                                f"(--hr-mag / --lr-mag), so the HR children would not tile it")
        with h5py.File(self.source.path, "r") as f:
            raw = f["coords"][()]
        if raw.ndim != 2 or raw.shape[1] != 2 or not np.issubdtype(raw.dtype, np.integer):
            raise self._refused(f"`coords` is {raw.dtype} {raw.shape}, not (N, 2) integers")
        coords = raw.astype(np.int64)
        outside = ((coords < 0).any(axis=1) | (coords[:, 0] + side0 > width)
                   | (coords[:, 1] + side0 > height))
        if outside.any():
            x, y = coords[np.argmax(outside)]
            raise self._refused(f"{int(outside.sum())} patch(es) lie outside the {width}x{height} "
                                f"px slide, e.g. at ({x}, {y}) with side {side0}")
        return coords, dataclasses.replace(geo, hr_size0=side0 // geo.r, lr_size0=side0)
