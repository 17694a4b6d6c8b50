"""Reading slides: open by path, resolve mpp and magnification, read regions at any
magnification from the best pyramid level."""

from lrmil.wsi.backends import IMAGE_EXTENSIONS
from lrmil.wsi.mpp import (
    MppOverride,
    load_mpp_csv,
    override_for,
    slide_name,
    slide_name_in_csv,
)
from lrmil.wsi.slide import Slide, open_slide

# File extensions taken as slides when a folder is given.
SLIDE_EXTENSIONS = (
    ".svs",
    ".tif",
    ".tiff",
    ".ndpi",
    ".mrxs",
    ".scn",
    ".vms",
    ".vmu",
    ".bif",
    ".svslide",
) + IMAGE_EXTENSIONS

__all__ = [
    "SLIDE_EXTENSIONS",
    "MppOverride",
    "Slide",
    "load_mpp_csv",
    "open_slide",
    "override_for",
    "slide_name",
    "slide_name_in_csv",
]
