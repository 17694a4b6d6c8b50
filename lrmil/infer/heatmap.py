"""Attention heatmap: the LR patches' attention over the slide thumbnail, a colour bar on the
right, and the top patches outlined."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

BAR_WIDTH = 64  # pixels added to the right of the thumbnail for the colour bar
ALPHA = 0.55  # opacity of the heat over tissue
OUTLINE = (0, 255, 255)


def render_heatmap(thumbnail: np.ndarray, coords: np.ndarray, size0: int, scale: float,
                   attention: np.ndarray, top_k: int = 5, cmap: str = "inferno") -> Image.Image:
    """An RGB image of size (w + BAR_WIDTH, h) for a thumbnail (h, w, 3) uint8 whose pixels are
    `scale` level-0 pixels wide; `coords` (N, 2) are level-0 patch corners of side `size0`."""
    from matplotlib import colormaps

    h, w = thumbnail.shape[:2]
    lo, hi = float(attention.min()), float(attention.max())
    level = (attention - lo) / (hi - lo) if hi > lo else np.ones_like(attention)
    boxes = _boxes(coords, size0, scale, w, h)

    heat = np.zeros((h, w), np.float32)
    covered = np.zeros((h, w), bool)
    for (x0, y0, x1, y1), v in zip(boxes, level, strict=True):
        heat[y0:y1, x0:x1] = v
        covered[y0:y1, x0:x1] = True
    colour = (colormaps[cmap](heat)[..., :3] * 255).astype(np.float32)
    base = thumbnail.astype(np.float32)
    blended = np.where(covered[..., None], (1 - ALPHA) * base + ALPHA * colour, base)

    image = Image.new("RGB", (w + BAR_WIDTH, h), "white")
    image.paste(Image.fromarray(blended.astype(np.uint8)), (0, 0))
    draw = ImageDraw.Draw(image)
    for i in np.argsort(-attention, kind="stable")[:top_k]:
        x0, y0, x1, y1 = boxes[i]
        draw.rectangle((x0, y0, max(x0, x1 - 1), max(y0, y1 - 1)), outline=OUTLINE, width=2)
    _colour_bar(image, draw, w, h, lo, hi, cmap)
    return image


def _boxes(coords: np.ndarray, size0: int, scale: float, w: int, h: int) -> np.ndarray:
    """Patch rectangles in thumbnail pixels, at least one pixel wide, clipped to the image."""
    x0 = np.clip(np.floor(coords[:, 0] * scale), 0, w - 1).astype(int)
    y0 = np.clip(np.floor(coords[:, 1] * scale), 0, h - 1).astype(int)
    x1 = np.clip(np.ceil((coords[:, 0] + size0) * scale), x0 + 1, w).astype(int)
    y1 = np.clip(np.ceil((coords[:, 1] + size0) * scale), y0 + 1, h).astype(int)
    return np.stack([x0, y0, x1, y1], axis=1)


def _colour_bar(image: Image.Image, draw: ImageDraw.ImageDraw, x: int, h: int, lo: float,
                hi: float, cmap: str) -> None:
    from matplotlib import colormaps

    margin = min(16, h // 8)
    top, bottom = margin, max(margin + 1, h - margin)
    ramp = np.linspace(1, 0, bottom - top)[:, None].repeat(16, axis=1)  # high values on top
    bar = (colormaps[cmap](ramp)[..., :3] * 255).astype(np.uint8)
    image.paste(Image.fromarray(bar), (x + 8, top))
    draw.text((x + 28, top), f"{hi:.2g}", fill="black")
    draw.text((x + 28, bottom - 10), f"{lo:.2g}", fill="black")
