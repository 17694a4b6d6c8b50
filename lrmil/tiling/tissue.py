"""Tissue mask from a low-magnification RGB thumbnail: Otsu on saturation, morphological
clean-up, small pieces dropped, small holes filled."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from lrmil.tiling.config import TissueParams


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


def _morph(mask: np.ndarray, radius: int, op: str) -> np.ndarray:
    """Binary closing or opening with a (2 radius + 1) square, as separable min/max filters
    (several times faster than a disk through ndimage's binary morphology). The edge is
    replicated so that tissue cut by the image border is not eroded away."""
    if radius < 1:
        return mask
    size, pixels = 2 * radius + 1, mask.view(np.uint8)
    first, second = (
        (ndimage.maximum_filter, ndimage.minimum_filter)
        if op == "close"
        else (ndimage.minimum_filter, ndimage.maximum_filter)
    )
    out = second(first(pixels, size=size, mode="nearest"), size=size, mode="nearest")
    return out.view(bool)


def _drop_small(mask: np.ndarray, min_px: float) -> np.ndarray:
    """Keep connected components (8-connected) of at least `min_px` pixels."""
    labels, n = ndimage.label(mask, structure=np.ones((3, 3), bool))
    if n == 0:
        return mask
    areas = np.bincount(labels.ravel())
    keep = areas >= min_px
    keep[0] = False
    return keep[labels]


def _fill_small_holes(mask: np.ndarray, max_px: float) -> np.ndarray:
    """Fill background components smaller than `max_px` that do not touch the border."""
    labels, n = ndimage.label(~mask)
    if n == 0:
        return mask
    areas = np.bincount(labels.ravel())
    fill = areas < max_px
    fill[0] = False
    border = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    fill[border] = False
    return mask | fill[labels]


def tissue_mask(rgb: np.ndarray, mpp: float, params: TissueParams) -> np.ndarray:
    """Boolean tissue mask of an (H, W, 3) uint8 thumbnail whose pixels are `mpp` microns."""
    sat = saturation(rgb)
    threshold = max(otsu_threshold(sat), params.min_saturation)
    mask = sat > threshold
    mask = _morph(mask, round(params.close_um / mpp), "close")
    mask = _morph(mask, round(params.open_um / mpp), "open")
    px_per_mm2 = 1e6 / (mpp * mpp)
    mask = _drop_small(mask, params.min_tissue_mm2 * px_per_mm2)
    return _fill_small_holes(mask, params.max_hole_mm2 * px_per_mm2)
