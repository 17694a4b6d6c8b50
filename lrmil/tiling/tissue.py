"""Tissue mask from a low-magnification RGB thumbnail: Otsu on saturation, morphological
clean-up (squares, edge replicated so tissue cut by the border survives), small pieces dropped,
small holes filled."""

from __future__ import annotations

import numpy as np

from lrmil.tiling.config import TissueParams
from lrmil.tiling.morphology import Runs, dilate, erode


def saturation(rgb: np.ndarray) -> np.ndarray:
    """HSV saturation as uint8 0-255 ((max - min) / max), without a float HSV conversion."""
    # Channel-wise maximum/minimum: several times faster than reducing over the strided axis.
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    hi = np.maximum(np.maximum(r, g), b)
    lo = np.minimum(np.minimum(r, g), b)
    return ((hi - lo) * np.float32(255) / np.maximum(hi, 1)).astype(np.uint8)


def otsu_threshold(values: np.ndarray) -> int:
    """Otsu's threshold of uint8 values: pixels > threshold are the upper class."""
    hist = np.bincount(values.ravel(), minlength=256).astype(np.float64)
    levels = np.arange(256, dtype=np.float64)
    w0 = np.cumsum(hist)
    w1 = w0[-1] - w0
    m0 = np.cumsum(hist * levels)
    mean0 = m0 / np.maximum(w0, 1)
    mean1 = (m0[-1] - m0) / np.maximum(w1, 1)
    between = w0 * w1 * (mean0 - mean1) ** 2
    return int(np.argmax(between))


def _drop_small(mask: np.ndarray, min_px: float) -> np.ndarray:
    """Keep connected components (8-connected) of at least `min_px` pixels."""
    runs = Runs(mask, diagonal=True)
    return runs.paint(runs.component_areas() >= min_px)


def _fill_small_holes(mask: np.ndarray, max_px: float) -> np.ndarray:
    """Fill background components (4-connected) smaller than `max_px` that do not touch the
    image border."""
    runs = Runs(~mask, diagonal=False)
    return mask | runs.paint((runs.component_areas() < max_px) & ~runs.touches_border())


def tissue_mask(rgb: np.ndarray, mpp: float, params: TissueParams) -> np.ndarray:
    """Boolean tissue mask of an (H, W, 3) uint8 thumbnail whose pixels are `mpp` microns."""
    sat = saturation(rgb)
    threshold = max(otsu_threshold(sat), params.min_saturation)
    mask = sat > threshold
    close, open_ = round(params.close_um / mpp), round(params.open_um / mpp)
    if close > 0:  # joins nearby tissue
        mask = erode(dilate(mask, close), close)
    if open_ > 0:  # removes specks
        mask = dilate(erode(mask, open_), open_)
    px_per_mm2 = 1e6 / (mpp * mpp)
    mask = _drop_small(mask, params.min_tissue_mm2 * px_per_mm2)
    return _fill_small_holes(mask, params.max_hole_mm2 * px_per_mm2)
