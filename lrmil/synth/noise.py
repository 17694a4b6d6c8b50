"""Deterministic noise as a function of GLOBAL pixel coordinates, so that any block of a slide
renders the same pixels whatever the order or the neighbours it is rendered with."""

from __future__ import annotations

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


def _interp_matrix(coords: np.ndarray, scale: float) -> tuple[np.ndarray, int]:
    """Smooth-step interpolation weights (len(coords), m) from the lattice nodes first..first+m-1
    to the coordinates; returns (weights, first)."""
    f = coords / scale
    i = np.floor(f).astype(np.int64)
    t = f - i
    t = t * t * (3 - 2 * t)
    first = int(i.min())
    weights = np.zeros((len(coords), int(i.max()) - first + 2), np.float32)
    rows = np.arange(len(coords))
    weights[rows, i - first] = 1 - t
    weights[rows, i - first + 1] = t
    return weights, first


class ValueNoise:
    """Smooth value noise in [-1, 1] on a lattice of spacing `scale` pixels, evaluated on a
    grid of coordinates as Wy @ lattice @ Wx^T (two small GEMMs, no per-pixel gathers)."""

    def __init__(self, seed: int, scale: float) -> None:
        self.seed = seed
        self.scale = scale

    def grid(self, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
        """Noise at every (y, x) of the grid ys x xs: shape (len(ys), len(xs)), float32."""
        wx, ix = _interp_matrix(np.asarray(xs, np.float64), self.scale)
        wy, iy = _interp_matrix(np.asarray(ys, np.float64), self.scale)
        jy = np.arange(iy, iy + wy.shape[1])[:, None]
        jx = np.arange(ix, ix + wx.shape[1])[None, :]
        lattice = hash_uniform(self.seed, jy, jx) * 2 - 1
        return wy @ lattice @ wx.T
