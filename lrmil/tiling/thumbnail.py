"""The thumbnail written beside each coords file: the slide, the tissue contour and the LR
grid (kept patches outlined)."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

CONTOUR = (0, 200, 0)
GRID = (20, 60, 230)
MIN_SIDE = 512  # small thumbnails are enlarged so that the grid stays readable


def draw_thumbnail(
    rgb: np.ndarray,
    mask: np.ndarray,
    coords: np.ndarray,
    size0: int,
    mask_scale: tuple[float, float],
) -> Image.Image:
    """`rgb` and `mask` at the mask's magnification; `coords` LR corners in level 0."""
    zoom = max(1, MIN_SIDE // max(mask.shape))
    image = rgb.copy()
    contour = mask & ~ndimage.binary_erosion(mask, border_value=0)
    image[contour] = CONTOUR
    thumb = Image.fromarray(image)
    if zoom > 1:
        thumb = thumb.resize((thumb.width * zoom, thumb.height * zoom), Image.Resampling.NEAREST)
    draw = ImageDraw.Draw(thumb)
    sx, sy = mask_scale[0] * zoom, mask_scale[1] * zoom
    for x, y in coords.tolist():
        draw.rectangle(
            (
                round(x * sx),
                round(y * sy),
                round((x + size0) * sx) - 1,
                round((y + size0) * sy) - 1,
            ),
            outline=GRID,
        )
    return thumb
