"""The thumbnail written beside each coords file: the slide, the tissue contour and the LR
grid (kept patches outlined)."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from lrmil.tiling.morphology import contour

CONTOUR = (0, 200, 0)
GRID = (20, 60, 230)
# Thumbnails are scaled to a readable, quick-to-write size (PNG encoding dominates the cost).
MIN_SIDE, MAX_SIDE = 512, 1024


def draw_thumbnail(
    rgb: np.ndarray,
    mask: np.ndarray,
    coords: np.ndarray,
    size0: int,
    mask_scale: tuple[float, float],
) -> Image.Image:
    """`rgb` and `mask` at the mask's magnification; `coords` LR corners in level 0."""
    image = rgb.copy()
    image[contour(mask)] = CONTOUR
    thumb = Image.fromarray(image)
    side = max(thumb.size)
    zoom = min(max(1.0, MIN_SIDE / side), MAX_SIDE / side)
    if zoom != 1:
        size = (max(1, round(thumb.width * zoom)), max(1, round(thumb.height * zoom)))
        enlarge = zoom > 1
        thumb = thumb.resize(size, Image.Resampling.NEAREST if enlarge else Image.Resampling.BOX)
    draw = ImageDraw.Draw(thumb)
    sx, sy = (
        thumb.width / mask.shape[1] * mask_scale[0],
        thumb.height / mask.shape[0] * mask_scale[1],
    )
    for x, y in coords.tolist():
        box = (
            round(x * sx),
            round(y * sy),
            round((x + size0) * sx) - 1,
            round((y + size0) * sy) - 1,
        )
        draw.rectangle(box, outline=GRID)
    return thumb
