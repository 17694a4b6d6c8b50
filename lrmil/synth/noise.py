"""Deterministic noise as a function of GLOBAL pixel coordinates, so that any block of a slide
renders the same pixels whatever the order or the neighbours it is rendered with. The compiled
renderer (csrc/cpu/synth_render.cpp) repeats this hash and interpolation for the pixels; here
they serve the scene (where the tissue is, to place the regions), and tests/synth/test_render.py
checks that the two agree."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)


def hash_uniform(seed: int, *keys: np.ndarray) -> np.ndarray:
    """Uniform floats in [0, 1) from a splitmix64 hash of `seed` and integer key arrays
    (broadcast together): a counter-based random source, no generator state to carry."""
    with np.errstate(over="ignore"):
        h = np.uint64(seed & 0xFFFFFFFFFFFFFFFF) * np.uint64(0x9E3779B97F4A7C15)
        for key in keys:
            h = h ^ (np.asarray(key).astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15))
            h = (h ^ (h >> np.uint64(30))) * _M1
            h = (h ^ (h >> np.uint64(27))) * _M2
            h = h ^ (h >> np.uint64(31))
    return (h >> np.uint64(40)).astype(np.float32) * np.float32(1.0 / (1 << 24))


def _nodes(coords: np.ndarray, spacing: float, smooth: bool) -> tuple[np.ndarray, np.ndarray]:
    """Lattice node left of each coordinate, and the weight of the right node (smooth-step or
    linear)."""
    f = np.asarray(coords, np.float64) / spacing
    i = np.floor(f)
    t = (f - i).astype(np.float32)
    return i.astype(np.int64), t * t * (3 - 2 * t) if smooth else t


def _needed(i: np.ndarray, t: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The nodes an axis reads (sorted), and the positions in them of each coordinate's left
    and right node. A coordinate on a node (weight 0) reads only that node, so a grid coarser
    than the lattice, like the scene's 16 px placement grid on the tissue's 8 px lattice,
    evaluates only the nodes it hits (the result is the same: left + 0 * (right - left))."""
    nodes = np.unique(np.concatenate([i, i[t > 0] + 1]))
    left = np.searchsorted(nodes, i)
    return nodes, left, np.where(t > 0, left + 1, left)


def interpolate(
    lattice: Callable[[np.ndarray, np.ndarray], np.ndarray],
    xs: np.ndarray,
    ys: np.ndarray,
    spacing: float,
    smooth: bool = True,
) -> np.ndarray:
    """Interpolate values given at the lattice nodes (j * spacing) to the grid ys x xs:
    `lattice(jy (m, 1), jx (1, n)) -> (m, n)` is called once on the nodes needed; x first,
    on those rows, then y by whole-row gathers (cheap, contiguous). No BLAS: a matrix product
    would be as fast on one thread but stalls when OpenBLAS threads compete on a busy machine.
    The result at a point depends only on its global coordinates, never on the grid's extent."""
    ix, tx = _nodes(xs, spacing, smooth)
    iy, ty = _nodes(ys, spacing, smooth)
    jx, x_left, x_right = _needed(ix, tx)
    jy, y_left, y_right = _needed(iy, ty)
    values = np.asarray(lattice(jy[:, None], jx[None, :]), np.float32)
    left = values[:, x_left]
    columns = left + tx * (values[:, x_right] - left)  # (lattice rows, len(xs))
    top = columns[y_left]
    return top + ty[:, None] * (columns[y_right] - top)


class ValueNoise:
    """Smooth value noise in [-1, 1]: hashed values on a lattice of spacing `scale` pixels,
    smooth-step interpolated."""

    def __init__(self, seed: int, scale: float) -> None:
        self.seed = seed
        self.scale = scale

    def grid(self, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
        """Noise at every (y, x) of the grid ys x xs: shape (len(ys), len(xs)), float32."""
        return interpolate(
            lambda jy, jx: hash_uniform(self.seed, jy, jx) * 2 - 1, xs, ys, self.scale
        )
