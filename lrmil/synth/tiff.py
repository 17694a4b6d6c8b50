"""A streaming writer of Aperio-style pyramidal TIFF (.svs) files that OpenSlide opens.

Level 0 and the reduced levels (downsample 4 each) are TOP-LEVEL tiled pages: OpenSlide ignores
SubIFD pyramids. The first page's ImageDescription is in Aperio's format, from which OpenSlide
reads `openslide.mpp-x/y` and `openslide.objective-power`. Tiles are JPEG, like real scans:
a 20k x 20k slide is then ~50 MB instead of ~1.2 GB, and readers pay the real decode cost.

Level 0 is rendered band by band (a band = one row of render blocks) and never held whole;
level 1 is accumulated by 4x4 area averaging into a temporary memory map while level 0 is
written, and each further level is averaged from the previous one.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import tifffile

from lrmil import _C

# render(x0, y0, width, height) -> (height, width, 3) uint8, the level-0 pixels of that box.
RenderFn = Callable[[int, int, int, int], np.ndarray]

TILE = 256  # TIFF tile side (Aperio writes 240 or 256)
DOWNSAMPLE = 4  # between consecutive levels, as Aperio's 40x/10x/2.5x pyramids
MIN_LEVEL_SIDE = 64  # stop adding levels once the next one's longer side would be smaller


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
    called on boxes of at most `band` x `band` pixels, `threads` boxes at a time (and as many
    JPEG encoders); the next band is rendered while the current one is encoded, so `render`
    should release the GIL. Returns the level sizes. `band` must be a multiple of TILE, so that bands
    hold whole rows of tiles."""
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
    with (
        tempfile.TemporaryFile(dir=Path(path).parent) as scratch,
        ThreadPoolExecutor(threads) as pool,  # the compiled renderer releases the GIL
        tifffile.TiffWriter(path, bigtiff=width * height * 3 > 2**31) as tiff,
    ):
        level1 = np.memmap(scratch, np.uint8, "w+", shape=(max(h1, 1), max(w1, 1), 3))

        def submit(y0: int) -> list[Future[np.ndarray]]:
            rows = min(band, height - y0)
            return [
                pool.submit(render, x0, y0, min(band, width - x0), rows)
                for x0 in range(0, width, band)
            ]

        def level0_tiles() -> Iterator[np.ndarray]:
            pending = submit(0)
            for y0 in range(0, height, band):
                strip = np.concatenate([block.result() for block in pending], axis=1)
                if y0 + band < height:  # render the next band while this one is encoded
                    pending = submit(y0 + band)
                if h1:
                    small = downsample4(strip)
                    y1 = y0 // DOWNSAMPLE
                    level1[y1 : y1 + small.shape[0], : small.shape[1]] = small[: h1 - y1, :w1]
                yield from _tiles(strip)

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
