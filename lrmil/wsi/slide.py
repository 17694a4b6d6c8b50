"""A slide opened by path: its pyramid, its magnification, and reads at any magnification."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

from lrmil.errors import SlideError
from lrmil.wsi.backends import Backend, open_backend
from lrmil.wsi.mpp import resolve_mpp

# A level may be up to 2% coarser than asked and still serve the read (a 0.505-mpp scan
# serves 5x from its "5x" level); beyond that a finer level is read and reduced.
LEVEL_TOLERANCE = 0.02
# Asking for more than 5% above the scan's magnification is an error, not an upsampling.
MAG_TOLERANCE = 0.05
# Reads that must be reduced and exceed this many level pixels (~200 MB RGB) go in strips.
MAX_READ_PIXELS = 1 << 26


class Slide:
    """An open slide. Coordinates are always in the level-0 frame (top-left corner)."""

    def __init__(self, path: Path, backend: Backend, mpp: float) -> None:
        self.path = path
        self.name = path.stem
        self._backend = backend
        self.mpp = mpp
        self.magnification = 10.0 / mpp
        self.level_dimensions = backend.level_dimensions
        self.level_downsamples = backend.level_downsamples
        self.dimensions: tuple[int, int] = backend.level_dimensions[0]
        # QuPath shows OpenSlide formats cropped to openslide.bounds-x/y: its (0, 0) is here.
        self.bounds_origin: tuple[int, int] = backend.bounds_origin()

    def __repr__(self) -> str:
        w, h = self.dimensions
        levels = len(self.level_dimensions)
        return f"Slide({self.name!r}, {w}x{h}, mpp={self.mpp:.4g}, levels={levels})"

    def __enter__(self) -> Slide:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._backend.close()

    def check_magnification(self, mag: float, what: str = "magnification") -> None:
        """SlideError if `mag` is above what this slide was scanned at."""
        if mag > self.magnification * (1 + MAG_TOLERANCE):
            raise SlideError(
                f"{self.path}: {what} {mag:g}x is higher than the scan's "
                f"{self.magnification:.3g}x (mpp {self.mpp:.4g})"
            )

    def best_level(self, downsample: float) -> int:
        """The coarsest level whose downsample is at most `downsample` (within tolerance)."""
        usable = [
            i
            for i, d in enumerate(self.level_downsamples)
            if d <= downsample * (1 + LEVEL_TOLERANCE)
        ]
        return max(usable, key=lambda i: self.level_downsamples[i]) if usable else 0

    def read(self, x0: int, y0: int, w0: int, h0: int, out_w: int, out_h: int) -> np.ndarray:
        """The level-0 rectangle [x0, x0+w0) x [y0, y0+h0) as an (out_h, out_w, 3) uint8 array,
        read once from the best level and resized in bulk (box filter) to the output size."""
        if min(w0, h0, out_w, out_h) <= 0:
            raise ValueError(f"empty region {w0}x{h0} -> {out_w}x{out_h}")
        level = self.best_level(min(w0 / out_w, h0 / out_h))
        d = self.level_downsamples[level]
        lw, lh = max(1, round(w0 / d)), max(1, round(h0 / d))
        if (lw, lh) == (out_w, out_h):
            return self._backend.read(level, int(x0), int(y0), lw, lh)
        if lw * lh <= MAX_READ_PIXELS:
            pixels = self._backend.read(level, int(x0), int(y0), lw, lh)
            return np.asarray(_resize(Image.fromarray(pixels), out_w, out_h))
        # A huge reduction (a thumbnail of a slide without a small level): horizontal strips,
        # each read and reduced on its own, so memory stays bounded. Strips start on multiples
        # of an integer reduction factor, so the result equals a single read.
        out = np.empty((out_h, out_w, 3), np.uint8)
        factor = lh / out_h
        rows = max(1, int(MAX_READ_PIXELS / lw / factor))
        for r0 in range(0, out_h, rows):
            r1 = min(r0 + rows, out_h)
            l0, l1 = round(r0 * factor), round(r1 * factor)
            strip = self._backend.read(level, int(x0), int(y0 + l0 * d), lw, max(1, l1 - l0))
            out[r0:r1] = np.asarray(_resize(Image.fromarray(strip), out_w, r1 - r0))
        return out

    def read_region(self, x0: int, y0: int, size0: int, out_size: int) -> np.ndarray:
        """The level-0 square [x0, x0+size0)^2 as an (out_size, out_size, 3) uint8 array."""
        return self.read(x0, y0, size0, size0, out_size, out_size)

    def read_at(self, x0: int, y0: int, w0: int, h0: int, mag: float) -> np.ndarray:
        """A level-0 rectangle at magnification `mag` (output size w0 * mag / level-0 mag)."""
        self.check_magnification(mag)
        scale = mag / self.magnification
        return self.read(x0, y0, w0, h0, max(1, round(w0 * scale)), max(1, round(h0 * scale)))

    def thumbnail(self, max_side: int) -> Image.Image:
        """The whole slide with its longer side `max_side` pixels (never upsampled)."""
        w, h = self.dimensions
        scale = min(1.0, max_side / max(w, h))
        out = self.read(0, 0, w, h, max(1, round(w * scale)), max(1, round(h * scale)))
        return Image.fromarray(out)


def _resize(image: Image.Image, out_w: int, out_h: int) -> Image.Image:
    w, h = image.size
    if w % out_w == 0 and h % out_h == 0 and w // out_w == h // out_h:
        return image.reduce(w // out_w)  # exact box average, the fast path
    resample = Image.Resampling.BOX if w >= out_w else Image.Resampling.BILINEAR
    return image.resize((out_w, out_h), resample)


def open_slide(path: str | os.PathLike[str], mpp: float | None = None) -> Slide:
    """Open a slide (OpenSlide formats, or a plain image as one level). `mpp` overrides the
    slide's metadata; without either, SlideError names the slide. Use as a context manager."""
    path = Path(path)
    backend = open_backend(path)
    try:
        resolved = resolve_mpp(path, mpp, backend.metadata_mpp(), backend.objective_power())
    except BaseException:
        backend.close()
        raise
    return Slide(path, backend, resolved)
