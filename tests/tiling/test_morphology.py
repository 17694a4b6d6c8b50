"""The numpy morphology and connected components agree with scipy.ndimage."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage

from lrmil.tiling.morphology import Runs, contour, dilate, erode

masks = st.builds(
    lambda h, w, p, seed: np.random.default_rng(seed).random((h, w)) < p,
    st.integers(1, 40),
    st.integers(1, 40),
    st.floats(0, 1),
    st.integers(0, 2**31 - 1),
)


def _areas_image(mask: np.ndarray, runs: Runs) -> np.ndarray:
    out = np.zeros(mask.shape)
    for row, start, end, area in zip(
        runs.rows, runs.starts, runs.ends, runs.component_areas(), strict=True
    ):
        out[row, start:end] = area
    return out


@settings(max_examples=150, deadline=None)
@given(masks, st.booleans())
def test_components_match_ndimage_label(mask, diagonal):
    runs = Runs(mask, diagonal=diagonal)
    labels, _ = ndimage.label(mask, structure=np.ones((3, 3)) if diagonal else None)
    want = np.where(labels > 0, np.bincount(labels.ravel())[labels], 0)
    np.testing.assert_array_equal(_areas_image(mask, runs), want)
    np.testing.assert_array_equal(runs.paint(np.ones(len(runs.rows), bool)), mask)
    # border-touching components
    border = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    touching = np.isin(labels, border[border > 0])
    got = np.zeros(mask.shape, bool)
    for row, start, end, t in zip(
        runs.rows, runs.starts, runs.ends, runs.touches_border(), strict=True
    ):
        got[row, start:end] = t
    np.testing.assert_array_equal(got, touching)


@settings(max_examples=100, deadline=None)
@given(masks, st.integers(1, 3))
def test_square_morphology_and_contour_match_ndimage(mask, radius):
    size = 2 * radius + 1
    pixels = mask.view(np.uint8)
    want_dilate = ndimage.maximum_filter(pixels, size, mode="nearest").view(bool)
    want_erode = ndimage.minimum_filter(pixels, size, mode="nearest").view(bool)
    np.testing.assert_array_equal(dilate(mask, radius), want_dilate)
    np.testing.assert_array_equal(erode(mask, radius), want_erode)
    np.testing.assert_array_equal(contour(mask), mask & ~ndimage.binary_erosion(mask))


def test_long_winding_components_match_ndimage():
    mask = np.zeros((41, 41), bool)
    for i in range(0, 20, 2):  # concentric square rings, each joined to the next diagonally
        mask[i, i : 41 - i] = mask[40 - i, i : 41 - i] = True
        mask[i : 41 - i, i] = mask[i : 41 - i, 40 - i] = True
        if i + 2 < 20:
            mask[i + 1, i + 1] = True
    runs = Runs(mask, diagonal=True)
    labels, n = ndimage.label(mask, structure=np.ones((3, 3)))
    assert len(np.unique(runs.component)) == n


def test_tiling_path_imports_neither_torch_nor_scipy():
    code = (
        "import sys; import lrmil.tiling.run, "
        "lrmil.tiling.tiler, lrmil.tiling.coords_io, lrmil.tiling.thumbnail; "
        "print(sorted(m for m in ('torch', 'scipy') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
