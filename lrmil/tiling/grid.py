"""Grid math as pure functions of sizes and coordinates (no slide needed).

All coordinates are level-0 pixels of the patch's top-left corner. An LR patch of side
`lr_size0 = r * hr_size0` has r x r HR children; child k = v * r + u sits at column u, row v."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Geometry:
    level0_mag: float
    lr_mag: float
    hr_mag: float
    patch_size: int  # pixels at each magnification
    r: int
    hr_size0: int  # HR patch side in level-0 pixels
    lr_size0: int  # LR patch side in level-0 pixels, exactly r * hr_size0

    @property
    def k(self) -> int:
        return self.r * self.r


def geometry(level0_mag: float, lr_mag: float, hr_mag: float, patch_size: int) -> Geometry:
    """Integer level-0 patch sides: the HR side is rounded once and the LR side is r times it,
    so children tile their parent exactly and every read is integer-aligned."""
    r = round(hr_mag / lr_mag)
    hr_size0 = max(1, round(patch_size * level0_mag / hr_mag))
    return Geometry(level0_mag, lr_mag, hr_mag, patch_size, r, hr_size0, r * hr_size0)


def lr_grid(width: int, height: int, size0: int) -> np.ndarray:
    """Top-left corners (N, 2) int64 of all patches of side `size0` that fit entirely inside a
    width x height slide, row-major (y, then x)."""
    xs = np.arange(0, width - size0 + 1, size0, dtype=np.int64)
    ys = np.arange(0, height - size0 + 1, size0, dtype=np.int64)
    gx, gy = np.meshgrid(xs, ys)
    return np.stack([gx.ravel(), gy.ravel()], axis=1)


def child_offsets(r: int, hr_size0: int) -> np.ndarray:
    """(K, 2) level-0 offsets of the children within their parent, k = v * r + u."""
    v, u = np.divmod(np.arange(r * r, dtype=np.int64), r)
    return np.stack([u, v], axis=1) * hr_size0


def child_coords(lr_coords: np.ndarray, r: int, hr_size0: int) -> np.ndarray:
    """(N, K, 2) top-left corners of the children of each LR patch."""
    return lr_coords[:, None, :] + child_offsets(r, hr_size0)[None, :, :]


def integral_image(mask: np.ndarray) -> np.ndarray:
    """Summed-area table with a zero first row and column: (h + 1, w + 1) int32 (thumbnail
    masks are far below 2^31 pixels; int32 halves the memory traffic)."""
    table = np.zeros((mask.shape[0] + 1, mask.shape[1] + 1), dtype=np.int32)
    np.cumsum(np.cumsum(mask, axis=0, dtype=np.int32), axis=1, out=table[1:, 1:])
    return table


def box_fractions(
    table: np.ndarray, corners0: np.ndarray, size0: int, scale: tuple[float, float]
) -> np.ndarray:
    """Fraction of mask pixels set inside each level-0 square [x, x+size0) x [y, y+size0).

    `table` is the integral image of a mask that maps to level 0 by `scale` = (mask width /
    slide width, mask height / slide height). Boxes are rounded to whole mask pixels, at
    least one pixel wide, and clipped to the mask."""
    h, w = table.shape[0] - 1, table.shape[1] - 1
    shape = corners0.shape[:-1]
    flat = corners0.reshape(-1, 2).astype(np.float64)
    sx, sy = scale
    x0 = np.clip(np.round(flat[:, 0] * sx).astype(np.int64), 0, w - 1)
    y0 = np.clip(np.round(flat[:, 1] * sy).astype(np.int64), 0, h - 1)
    x1 = np.clip(np.maximum(np.round((flat[:, 0] + size0) * sx).astype(np.int64), x0 + 1), 1, w)
    y1 = np.clip(np.maximum(np.round((flat[:, 1] + size0) * sy).astype(np.int64), y0 + 1), 1, h)
    inside = table[y1, x1] - table[y0, x1] - table[y1, x0] + table[y0, x0]
    return (inside / ((x1 - x0) * (y1 - y0))).reshape(shape)
