"""Tiling: tissue mask, the LR grid with HR children, coords files and thumbnails."""

from lrmil.tiling.config import TilingConfig, TissueParams
from lrmil.tiling.coords_io import TiledSlide, read_coords, write_coords
from lrmil.tiling.inputs import SlideList, collect_slides
from lrmil.tiling.run import NO_TISSUE, output_paths, tile_slides
from lrmil.tiling.tiler import SlideTiles, tile_slide

__all__ = [
    "NO_TISSUE",
    "SlideList",
    "SlideTiles",
    "TiledSlide",
    "TilingConfig",
    "TissueParams",
    "collect_slides",
    "output_paths",
    "read_coords",
    "tile_slide",
    "tile_slides",
    "write_coords",
]
