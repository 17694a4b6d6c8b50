"""Fast reads for tiled TIFF slides (Aperio .svs, generic tiled TIFF): decode just the tiles a
region needs and assemble them, without OpenSlide's per-read overhead (premultiplied ARGB
conversion, un-premultiplying in Python, its tile cache). Pixels are identical to OpenSlide's
(same libjpeg-turbo decode); any level that does not map cleanly stays with OpenSlide."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from lrmil.errors import SlideError

# OpenSlide vendors whose levels are plain tiled TIFF pages (other TIFF-based formats, e.g.
# Philips or Ventana, lay their pyramids out differently and stay with OpenSlide).
FAST_VENDORS = ("aperio", "generic-tiff")
# none, LZW, JPEG, deflate: decoded by tifffile through imagecodecs.
FAST_COMPRESSIONS = (1, 5, 7, 8)
RGB, YCBCR = 2, 6


def _usable(page) -> bool:
    photometric_ok = page.photometric == RGB or (
        page.photometric == YCBCR and page.compression == 7
    )
    return (
        page.is_tiled
        and page.compression in FAST_COMPRESSIONS
        and photometric_ok
        and page.samplesperpixel == 3
        and page.planarconfig == 1
        and page.imagedepth == 1
        and page.dtype == np.uint8
    )


def _open(path: Path):
    import tifffile

    tif = tifffile.TiffFile(path)
    tif.filehandle.set_lock(True)  # reads may come from several threads (like OpenSlide)
    return tif


def _level_pages(tif, level_dimensions: tuple[tuple[int, int], ...]) -> list[int] | None:
    """The page index of each OpenSlide level, or None if a level has no usable page."""
    candidates = [(i, p) for i, p in enumerate(tif.pages) if p.is_tiled]
    indices = []
    for width, height in level_dimensions:
        found = next(
            (i for i, p in candidates if (p.imagewidth, p.imagelength) == (width, height)), None
        )
        if found is None or not _usable(tif.pages[found]):
            return None
        indices.append(found)
    return indices


class TiledTiff:
    def __init__(self, path: Path, tif, page_indices: list[int]) -> None:
        self._path = path
        self._page_indices = page_indices
        self._attach(tif)

    def _attach(self, tif) -> None:
        self._tif = tif
        self._pages = [tif.pages[i] for i in self._page_indices]
        self._pid = os.getpid()

    def _check_process(self) -> None:
        # A forked child (a DataLoader worker) shares the parent's file offset: seek-and-read
        # from both would interleave, so the child opens its own handle.
        if self._pid != os.getpid():
            self._attach(_open(self._path))

    @classmethod
    def open(
        cls, path: Path, vendor: str | None, level_dimensions: tuple[tuple[int, int], ...]
    ) -> TiledTiff | None:
        """A reader whose level i is OpenSlide's level i, or None if the file is not a plain
        tiled TIFF pyramid (then OpenSlide reads everything)."""
        if vendor not in FAST_VENDORS:
            return None
        try:
            tif = _open(path)
        except Exception:  # OpenSlide opened it; leave any oddity to OpenSlide
            return None
        try:
            indices = _level_pages(tif, level_dimensions)
        except Exception:  # e.g. a page chain cut short by truncation
            indices = None
        if indices is None:
            tif.close()
            return None
        return cls(path, tif, indices)

    def read(self, level: int, lx: int, ly: int, width: int, height: int) -> np.ndarray:
        """(height, width, 3) uint8 of level `level` from level pixel (lx, ly); white outside."""
        self._check_process()
        page = self._pages[level]
        tw, th = page.tilewidth, page.tilelength
        out = np.full((height, width, 3), 255, np.uint8)
        x_lo, y_lo = max(lx, 0), max(ly, 0)
        x_hi, y_hi = min(lx + width, page.imagewidth), min(ly + height, page.imagelength)
        if x_lo >= x_hi or y_lo >= y_hi:
            return out
        cols = -(-page.imagewidth // tw)
        indices = [
            ty * cols + tx
            for ty in range(y_lo // th, (y_hi - 1) // th + 1)
            for tx in range(x_lo // tw, (x_hi - 1) // tw + 1)
            if page.databytecounts[ty * cols + tx] > 0  # missing tiles stay white
        ]
        try:
            segments = self._tif.filehandle.read_segments(
                [page.dataoffsets[i] for i in indices],
                [page.databytecounts[i] for i in indices],
                indices,
            )
            for data, index in segments:
                tile = page.decode(data, index, jpegtables=page.jpegtables)[0][0]
                ty, tx = divmod(index, cols)
                x0, y0 = tx * tw, ty * th
                ax0, ax1 = max(x0, x_lo), min(x0 + tw, x_hi)
                ay0, ay1 = max(y0, y_lo), min(y0 + th, y_hi)
                out[ay0 - ly : ay1 - ly, ax0 - lx : ax1 - lx] = tile[
                    ay0 - y0 : ay1 - y0, ax0 - x0 : ax1 - x0, :3
                ]
        except Exception as exc:  # truncated or corrupt tile data
            raise SlideError(f"{self._path}: cannot read the slide ({exc})") from None
        return out

    def close(self) -> None:
        self._tif.close()
