"""The tissue mask on drawn thumbnails."""

from __future__ import annotations

import numpy as np

from lrmil.tiling import TissueParams
from lrmil.tiling.tissue import otsu_threshold, saturation, tissue_mask

PINK, GLASS = (200, 110, 170), (235, 235, 238)


def _thumb(h: int = 200, w: int = 300, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    image = np.empty((h, w, 3), np.uint8)
    image[:] = GLASS
    noise = rng.integers(-6, 7, image.shape)
    return np.clip(image.astype(int) + noise, 0, 255).astype(np.uint8)


def test_saturation_and_otsu():
    rgb = np.array([[[255, 255, 255], [200, 100, 100], [0, 0, 0], [100, 50, 0]]], np.uint8)
    assert saturation(rgb).tolist() == [[0, 127, 0, 255]]
    values = np.concatenate([np.full(500, 10), np.full(500, 120)]).astype(np.uint8)
    assert 10 <= otsu_threshold(values) < 120


def test_mask_finds_tissue_drops_specks_fills_small_holes():
    rgb = _thumb()
    rgb[40:160, 50:200] = PINK  # a tissue piece (120 x 150 px at 8 um = 1.15 mm2)
    rgb[95:99, 120:124] = GLASS  # a small hole (4 x 4 px): filled
    rgb[60:140, 160:190] = GLASS  # a large lumen touching nothing: kept as a hole
    rgb[10:13, 260:263] = PINK  # a speck (3 x 3 px): dropped
    mask = tissue_mask(rgb, mpp=8.0, params=TissueParams())
    assert mask[50:150, 60:150].all()
    assert mask[95:99, 120:124].all()
    assert not mask[70:130, 168:182].any()
    assert not mask[5:20, 250:270].any()
    assert not mask[:, 220:250].any()


def test_blank_slide_has_no_tissue():
    # Otsu always splits; the saturation floor keeps glass noise from becoming tissue.
    assert not tissue_mask(_thumb(seed=3), mpp=8.0, params=TissueParams()).any()


def test_tissue_touching_the_border_survives_closing():
    rgb = _thumb()
    rgb[:, :100] = PINK
    mask = tissue_mask(rgb, mpp=8.0, params=TissueParams())
    assert mask[:, :95].all()
