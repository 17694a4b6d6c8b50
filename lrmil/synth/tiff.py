"""A streaming writer of Aperio-style pyramidal TIFF (.svs) files that OpenSlide opens.

Level 0 and the reduced levels (downsample 4 each) are TOP-LEVEL tiled pages: OpenSlide ignores
SubIFD pyramids. The first page's ImageDescription is in Aperio's format, from which OpenSlide
reads `openslide.mpp-x/y` and `openslide.objective-power`. Tiles are JPEG, like real scans:
a 20k x 20k slide is then ~50 MB instead of ~1.2 GB, and readers pay the real decode cost.

Level 0 is rendered band by band (a band = one row of render blocks) and never held whole:
each block is rendered, averaged 4x4 into level 1 (a temporary memory map) and JPEG-encoded
by a worker thread; each further level is averaged from the previous one.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import imagecodecs
import numpy as np
import tifffile

from lrmil._native import lib

_C = lib()  # the compiled core, or a clear "not built" error

# render(x0, y0, width, height) -> (height, width, 3) uint8, the level-0 pixels of that box.
RenderFn = Callable[[int, int, int, int], np.ndarray]

TILE = 256  # TIFF tile side (Aperio writes 240 or 256)
DOWNSAMPLE = 4  # between consecutive levels, as Aperio's 40x/10x/2.5x pyramids
MIN_LEVEL_SIDE = 64  # stop adding levels once the next one's longer side would be smaller
MAX_REPEATED_TILES = 64  # distinct repeated tiles whose JPEG is kept (glass needs one)


def level_sizes(width: int, height: int) -> list[tuple[int, int]]:
    """(width, height) of every pyramid level: level 0, then // 4 while the longer side of the
    next level stays >= MIN_LEVEL_SIDE."""
    sizes = [(width, height)]
    while max(sizes[-1]) // DOWNSAMPLE >= MIN_LEVEL_SIDE and min(sizes[-1]) // DOWNSAMPLE >= 1:
        w, h = sizes[-1]
        sizes.append((w // DOWNSAMPLE, h // DOWNSAMPLE))
    return sizes


def aperio_description(width: int, height: int, mpp: float, magnification: float) -> str:
    """Level-0 ImageDescription in the format OpenSlide's Aperio reader parses."""
    return (
        "Aperio Image Library v12.0.15 (lrmil synth)\n"
        f"{width}x{height} [0,0 {width}x{height}] ({TILE}x{TILE}) JPEG/RGB Q=90"
        f"|AppMag = {magnification:g}|MPP = {mpp:g}"
    )


def downsample4(image: np.ndarray) -> np.ndarray:
    """Area average over 4x4 blocks, the rounded mean of 16 pixels (trailing rows/columns that
    do not fill a block dropped). Compiled: numpy's strided sum took longer than rendering."""
    if image.strides[1:] != (3, 1):
        image = np.ascontiguousarray(image)
    return _C.synth_downsample4(image)


def _tiles(image: np.ndarray) -> Iterator[np.ndarray]:
    """Row-major TILE x TILE tiles (tifffile zero-pads the edge tiles)."""
    for y in range(0, image.shape[0], TILE):
        for x in range(0, image.shape[1], TILE):
            yield image[y : y + TILE, x : x + TILE]


class _JpegTiles:
    """Encodes a block's tiles as tifffile does (YCbCr 4:2:0 JPEG, like Aperio's; edge tiles
    zero-padded to TILE x TILE). A tile seen before is not encoded again: most of a slide is
    glass, whose tiles are all alike (its grain repeats every TILE px). Thread-safe: a race
    only encodes a tile twice, into the same bytes."""

    def __init__(self, quality: int) -> None:
        self.quality = quality
        self.seen: set[bytes] = set()  # samples of the tiles encoded so far
        self.repeated: dict[bytes, tuple[np.ndarray, bytes]] = {}  # samples -> tile, its JPEG

    def __call__(self, block: np.ndarray) -> list[list[bytes]]:
        """The block's JPEG tiles, [tile row][tile column]."""
        return [
            [
                self._encode(block[y : y + TILE, x : x + TILE])
                for x in range(0, block.shape[1], TILE)
            ]
            for y in range(0, block.shape[0], TILE)
        ]

    def _encode(self, tile: np.ndarray) -> bytes:
        if tile.shape[:2] != (TILE, TILE):
            pad = ((0, TILE - tile.shape[0]), (0, TILE - tile.shape[1]), (0, 0))
            return self._jpeg(np.pad(tile, pad))
        key = tile[::32, ::32].tobytes()
        known = self.repeated.get(key)
        if known is not None and np.array_equal(known[0], tile):
            return known[1]
        data = self._jpeg(np.ascontiguousarray(tile))
        if key in self.seen and known is None and len(self.repeated) < MAX_REPEATED_TILES:
            self.repeated[key] = (tile.copy(), data)
        self.seen.add(key)
        return data

    def _jpeg(self, tile: np.ndarray) -> bytes:
        return imagecodecs.jpeg_encode(
            tile, level=self.quality, subsampling=(2, 2), colorspace="RGB", outcolorspace="YCBCR"
        )


def write_pyramid(
    path: str | os.PathLike[str],
    width: int,
    height: int,
    render: RenderFn,
    *,
    mpp: float = 0.5,
    magnification: float | None = None,
    band: int = 512,
    quality: int = 90,
    threads: int = 1,
) -> list[tuple[int, int]]:
    """Write the pyramid of a `width` x `height` image whose level-0 pixels `render` returns,
    called on boxes of at most `band` x `band` pixels. `threads` workers each render a box,
    average it into level 1 and encode its tiles (`render` should release the GIL); the next
    band is in the works while the current one is written. Returns the level sizes. `band`
    must be a multiple of TILE, so that bands hold whole rows of tiles."""
    if band <= 0 or band % TILE:
        raise ValueError(f"band must be a multiple of {TILE}, got {band}")
    magnification = 10.0 / mpp if magnification is None else magnification
    sizes = level_sizes(width, height)
    options = {
        "dtype": np.uint8,
        "tile": (TILE, TILE),
        "photometric": "rgb",
        "compression": "jpeg",
        "compressionargs": {"level": quality},
        "maxworkers": threads,
        "metadata": None,
    }
    w1, h1 = sizes[1] if len(sizes) > 1 else (0, 0)
    jpeg_tiles = _JpegTiles(quality)

    def block(x0: int, y0: int, w: int, h: int) -> tuple[np.ndarray | None, list[list[bytes]]]:
        pixels = render(x0, y0, w, h)
        return (downsample4(pixels) if h1 else None), jpeg_tiles(pixels)

    with (
        tempfile.TemporaryFile(dir=Path(path).parent) as scratch,
        ThreadPoolExecutor(threads) as pool,
        tifffile.TiffWriter(path, bigtiff=width * height * 3 > 2**31) as tiff,
    ):
        shape = (max(h1, 1), max(w1, 1), 3)
        if hasattr(os, "posix_fallocate"):  # a full disk: ENOSPC here, not SIGBUS in the memmap
            os.posix_fallocate(scratch.fileno(), 0, int(np.prod(shape)))
        level1 = np.memmap(scratch, np.uint8, "w+", shape=shape)
        starts = range(0, width, band)

        def submit(y0: int) -> list[Future[tuple[np.ndarray | None, list[list[bytes]]]]]:
            rows = min(band, height - y0)
            return [pool.submit(block, x0, y0, min(band, width - x0), rows) for x0 in starts]

        def level0_tiles() -> Iterator[bytes]:
            pending = submit(0)
            for y0 in range(0, height, band):
                done = [future.result() for future in pending]
                if y0 + band < height:  # keep the workers busy while this band is written
                    pending = submit(y0 + band)
                y1 = y0 // DOWNSAMPLE
                for x0, (small, _) in zip(starts, done, strict=True):
                    if small is not None:
                        x1 = x0 // DOWNSAMPLE
                        level1[y1 : y1 + small.shape[0], x1 : x1 + small.shape[1]] = small
                for r in range(len(done[0][1])):  # row-major over the whole level
                    for _, tiles in done:
                        yield from tiles[r]

        tiff.write(
            level0_tiles(),
            shape=(height, width, 3),
            description=aperio_description(width, height, mpp, magnification),
            **options,
        )
        level = level1
        for i, (w, h) in enumerate(sizes[1:], start=1):
            if i > 1:
                level = downsample4(level)[:h, :w]
            tiff.write(
                _tiles(level[:h, :w]),
                shape=(h, w, 3),
                description=f"Aperio Image Library v12.0.15 (lrmil synth)\n{width}x{height} "
                f"-> {w}x{h} - |",
                **options,
            )
    return sizes
