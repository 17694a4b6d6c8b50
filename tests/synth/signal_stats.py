"""Image statistics of a slide's special regions, measured from the written file: at 20x the
nuclear size of the cores, at 5x their mean colour. Used by test_signal.py."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import openslide
from scipy import ndimage

from lrmil.synth import Region


@dataclass
class RegionStats:
    kind: str
    large_fraction: float  # 20x: share of nuclear area in nuclei wider than 9 px (granulometry)
    nuclear_od: float  # 20x: mean red-channel optical density of nuclear pixels
    chromatin: float  # 20x: std of that density inside the nuclei (coarse, clumped chromatin)
    lr_rgb: np.ndarray  # 5x: mean RGB of the core
    lr_std: float  # 5x: grey-level standard deviation in the core


def _core(size: int, radius: float) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size] - (size - 1) / 2
    return np.hypot(xx, yy) <= radius


def region_stats(slide: openslide.OpenSlide, region: Region, core: float = 0.6) -> RegionStats:
    r0 = region.radius * core
    size0 = int(2 * r0) // 4 * 4
    x0, y0 = int(region.x - size0 / 2) // 4 * 4, int(region.y - size0 / 2) // 4 * 4
    hr = np.asarray(slide.read_region((x0, y0), 0, (size0, size0)).convert("RGB"), np.float32)
    od_red = -np.log(np.maximum(hr[..., 0], 1) / 240)
    smooth = ndimage.gaussian_filter(od_red, 1.0)  # bridge the chromatin texture
    nuclei = (smooth > 0.45) & _core(size0, r0)
    large = ndimage.binary_opening(nuclei, _core(9, 4.5))  # removes anything narrower than 9 px
    interior = ndimage.binary_erosion(nuclei, iterations=1)
    lr = np.asarray(slide.read_region((x0, y0), 1, (size0 // 4, size0 // 4)).convert("RGB"))
    lr_core = _core(size0 // 4, r0 / 4)
    return RegionStats(
        region.kind,
        float(large.sum() / max(nuclei.sum(), 1)),
        float(od_red[nuclei].mean()),
        float(od_red[interior].std()),
        lr[lr_core].reshape(-1, 3).mean(axis=0),
        float(lr[lr_core].mean(axis=-1).std()),
    )
