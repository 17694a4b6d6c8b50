"""Binary morphology and connected components in plain numpy.

SciPy's ndimage would do the same, but importing it costs a few hundred milliseconds (it pulls
in scipy.special and numpy.testing): a large share of a whole `lrmil tile` process. Masks here
are thumbnails (~1-2 Mpx) and the operations are simple enough to vectorise."""

from __future__ import annotations

import numpy as np


def _sliding(a: np.ndarray, size: int, axis: int, reduce: np.ufunc) -> np.ndarray:
    """Max or min over a centred window of `size` along `axis`, the edge replicated."""
    r = size // 2
    pad = [(0, 0), (0, 0)]
    pad[axis] = (r, r)
    padded = np.pad(a, pad, mode="edge")
    n = a.shape[axis]
    out = padded.take(range(0, n), axis=axis)
    for shift in range(1, size):
        reduce(out, padded.take(range(shift, shift + n), axis=axis), out=out)
    return out


def dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    """Dilation by a (2 radius + 1) square (separable), the edge replicated."""
    size = 2 * radius + 1
    return _sliding(_sliding(mask, size, 0, np.maximum), size, 1, np.maximum)


def erode(mask: np.ndarray, radius: int) -> np.ndarray:
    """Erosion by a (2 radius + 1) square (separable), the edge replicated."""
    size = 2 * radius + 1
    return _sliding(_sliding(mask, size, 0, np.minimum), size, 1, np.minimum)


def contour(mask: np.ndarray) -> np.ndarray:
    """Mask pixels with a 4-neighbour outside the mask (or on the image border)."""
    inner = np.zeros_like(mask)
    inner[1:-1, 1:-1] = (
        mask[1:-1, 1:-1] & mask[:-2, 1:-1] & mask[2:, 1:-1] & mask[1:-1, :-2] & mask[1:-1, 2:]
    )
    return mask & ~inner


class Runs:
    """The horizontal runs of a mask, grouped into connected components."""

    def __init__(self, mask: np.ndarray, diagonal: bool) -> None:
        h, w = mask.shape
        padded = np.zeros((h, w + 2), np.int8)
        padded[:, 1:-1] = mask
        step = np.diff(padded, axis=1)  # +1 where a run starts, -1 one past its end
        self.rows, self.starts = np.nonzero(step == 1)
        _, self.ends = np.nonzero(step == -1)  # row-major, so paired with the starts
        self.shape = (h, w)
        self.component = self._components(diagonal)

    def _components(self, diagonal: bool) -> np.ndarray:
        n = len(self.rows)
        if n == 0:
            return np.zeros(0, np.int64)
        # Runs a (row y) and b (row y + 1) touch if their column ranges overlap (or meet
        # diagonally). Keys row * stride + column keep rows apart so one search does all rows.
        k = int(diagonal)
        stride = self.shape[1] + 3
        start_key = self.rows * stride + self.starts
        end_key = self.rows * stride + self.ends
        b = np.nonzero(self.rows > 0)[0]
        above = (self.rows[b] - 1) * stride
        lo = np.searchsorted(end_key, above + self.starts[b] - k, side="right")
        hi = np.searchsorted(start_key, above + self.ends[b] + k, side="left")
        count = np.maximum(hi - lo, 0)
        first = np.repeat(lo - np.cumsum(count) + count, count)
        a_idx = first + np.arange(count.sum())
        b_idx = np.repeat(b, count)
        # Min-label hooking with pointer jumping until every edge joins equal labels.
        parent = np.arange(n)
        while True:
            la, lb = parent[a_idx], parent[b_idx]
            if np.array_equal(la, lb):
                return parent
            low = np.minimum(la, lb)
            np.minimum.at(parent, la, low)
            np.minimum.at(parent, lb, low)
            while True:
                jumped = parent[parent]
                if np.array_equal(jumped, parent):
                    break
                parent = jumped

    def component_areas(self) -> np.ndarray:
        """Pixels in each run's component, per run."""
        areas = np.bincount(
            self.component, weights=self.ends - self.starts, minlength=len(self.rows)
        )
        return areas[self.component]

    def touches_border(self) -> np.ndarray:
        """Whether each run's component touches the image border, per run."""
        h, w = self.shape
        border = (self.rows == 0) | (self.rows == h - 1) | (self.starts == 0) | (self.ends == w)
        touching = np.zeros(len(self.rows), bool)
        touching[self.component[border]] = True
        return touching[self.component]

    def paint(self, keep: np.ndarray) -> np.ndarray:
        """A mask of the runs selected by `keep` (per run)."""
        h, w = self.shape
        edges = np.zeros((h, w + 1), np.int8)
        edges[self.rows[keep], self.starts[keep]] = 1
        edges[self.rows[keep], self.ends[keep]] = -1
        return np.cumsum(edges, axis=1, dtype=np.int8)[:, :w] > 0
