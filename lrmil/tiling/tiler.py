"""Tiling one open slide: the tissue mask, the LR grid kept by tissue fraction, and for each
LR patch its r x r HR children with a validity flag from the child's own tissue fraction."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lrmil.errors import SlideError
from lrmil.tiling import grid
from lrmil.tiling.config import TilingConfig
from lrmil.tiling.foreign import GivenGrid
from lrmil.tiling.tissue import tissue_mask
from lrmil.wsi import Slide


@dataclass
class SlideTiles:
    geometry: grid.Geometry
    coords: np.ndarray  # (N, 2) int64, LR top-left corners in level 0
    tissue: np.ndarray  # (N,) float32, LR tissue fraction
    hr_coords: np.ndarray  # (N, K, 2) int64
    hr_valid: np.ndarray  # (N, K) bool
    thumbnail: np.ndarray  # (h, w, 3) uint8 at the mask's magnification
    mask: np.ndarray  # (h, w) bool
    mask_scale: tuple[float, float]  # mask pixels per level-0 pixel (x, y)


def tile_slide(slide: Slide, config: TilingConfig, *, lr_only: bool = False,
               given: GivenGrid | None = None) -> SlideTiles:
    """Mask + grid + children of one slide. An empty grid (no tissue) is a valid result.
    `lr_only` (inference, which reads no HR patch): only the LR magnification must be within
    the scan's. `given` (a CLAM/TRIDENT grid): its positions are the LR grid, every one kept
    (the tool chose them, and its feature files follow them), children as for lrmil's own."""
    if lr_only:
        slide.check_magnification(config.lr_mag, "the model's LR magnification")
    else:
        slide.check_magnification(config.hr_mag, "--hr-mag")
    geo = grid.geometry(slide.magnification, config.lr_mag, config.hr_mag, config.patch_size)
    width, height = slide.dimensions
    if width < geo.lr_size0 or height < geo.lr_size0:
        raise SlideError(
            f"{slide.path}: the slide ({width}x{height} px) is smaller than one "
            f"{config.lr_mag:g}x patch ({geo.lr_size0} px at level 0)"
        )
    if given is None:
        candidates = grid.lr_grid(width, height, geo.lr_size0)
    else:  # checked before the slide is read
        candidates, geo = given.positions(geo, slide.magnification, slide.dimensions,
                                          slide.level_downsamples)
    # The mask is never computed above the scan's own magnification.
    scale = min(1.0, config.tissue.mask_mag / slide.magnification)
    mask_w, mask_h = max(1, round(width * scale)), max(1, round(height * scale))
    thumb = slide.read(0, 0, width, height, mask_w, mask_h)
    mask = tissue_mask(thumb, slide.mpp * width / mask_w, config.tissue)

    table = grid.integral_image(mask)
    mask_scale = (mask_w / width, mask_h / height)
    fraction = grid.box_fractions(table, candidates, geo.lr_size0, mask_scale)
    if given is None:
        keep = fraction >= config.tissue_threshold
        if config.tissue_threshold == 0:  # "keep everything" still needs some tissue
            keep &= fraction > 0
    else:
        keep = np.ones(len(candidates), dtype=bool)
    coords = candidates[keep]
    hr_coords = grid.child_coords(coords, geo.r, geo.hr_size0)
    child_fraction = grid.box_fractions(table, hr_coords, geo.hr_size0, mask_scale)
    hr_valid = (child_fraction >= config.child_threshold) & (child_fraction > 0)
    return SlideTiles(
        geometry=geo,
        coords=coords,
        tissue=fraction[keep].astype(np.float32),
        hr_coords=hr_coords,
        hr_valid=hr_valid,
        thumbnail=thumb,
        mask=mask,
        mask_scale=mask_scale,
    )
