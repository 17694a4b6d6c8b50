"""Slide file readers behind one small interface: the level pyramid, the scan metadata, and
reading a rectangle of one level as RGB (areas outside the slide or transparent are white)."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np
from PIL import Image

from lrmil.errors import SlideError
from lrmil.wsi.tiff_tiles import TiledTiff
from lrmil.wsi.truncation import truncation

# Read by Pillow as one-level slides; .tif/.tiff go to OpenSlide first and fall back here.
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp")
WHITE = (255, 255, 255)


class Backend(Protocol):
    level_dimensions: tuple[tuple[int, int], ...]
    level_downsamples: tuple[float, ...]

    def metadata_mpp(self) -> float | None: ...
    def objective_power(self) -> float | None: ...
    def bounds_origin(self) -> tuple[int, int]:
        """Level-0 corner of the scanned area that viewers (QuPath) show as (0, 0)."""
        ...
    def read(self, level: int, x0: int, y0: int, width: int, height: int) -> np.ndarray:
        """(height, width, 3) uint8 RGB of level `level` whose top-left is (x0, y0) in level 0."""
        ...

    def close(self) -> None: ...


def _positive_float(value: object) -> float | None:
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return number if number > 0 else None


def _on_white(image: Image.Image) -> Image.Image:
    """RGBA -> RGB with transparent pixels (outside the scanned area) made white."""
    if image.mode == "RGBA":
        lowest_alpha, _ = image.getchannel("A").getextrema()
        if lowest_alpha < 255:
            image = Image.alpha_composite(Image.new("RGBA", image.size, WHITE + (255,)), image)
    return image.convert("RGB") if image.mode != "RGB" else image


class OpenSlideBackend:
    def __init__(self, path: Path) -> None:
        import openslide

        self._path = path
        self._error = openslide.OpenSlideError
        self._slide = openslide.OpenSlide(str(path))
        self.level_dimensions = tuple(self._slide.level_dimensions)
        self.level_downsamples = tuple(float(d) for d in self._slide.level_downsamples)
        vendor = self._slide.properties.get("openslide.vendor")
        self._tiles = TiledTiff.open(path, vendor, self.level_dimensions)

    def metadata_mpp(self) -> float | None:
        props = self._slide.properties
        x = _positive_float(props.get("openslide.mpp-x"))
        y = _positive_float(props.get("openslide.mpp-y"))
        return (x + y) / 2 if x and y else x or y

    def objective_power(self) -> float | None:
        return _positive_float(self._slide.properties.get("openslide.objective-power"))

    def bounds_origin(self) -> tuple[int, int]:
        props = self._slide.properties
        return (int(props.get("openslide.bounds-x", 0) or 0),
                int(props.get("openslide.bounds-y", 0) or 0))

    def read(self, level: int, x0: int, y0: int, width: int, height: int) -> np.ndarray:
        if self._tiles is not None:
            d = self.level_downsamples[level]
            return self._tiles.read(level, round(x0 / d), round(y0 / d), width, height)
        try:
            region = self._slide.read_region((x0, y0), level, (width, height))
        except self._error as exc:  # a truncated or corrupt file fails at the first read
            problem = truncation(self._path) or f"cannot read the slide ({exc})"
            raise SlideError(f"{self._path}: {problem}") from None
        return np.asarray(_on_white(region))

    def close(self) -> None:
        if self._tiles is not None:
            self._tiles.close()
        self._slide.close()


class ImageBackend:
    """A plain image as a one-level slide (small tests, exported regions). It has no mpp."""

    def __init__(self, path: Path) -> None:
        try:
            with Image.open(path) as image:
                self._image = _on_white(image.convert("RGBA" if "A" in image.mode else "RGB"))
        except (OSError, Image.DecompressionBombError) as exc:
            raise SlideError(f"{path}: cannot read the image ({exc})") from None
        self.level_dimensions = (self._image.size,)
        self.level_downsamples = (1.0,)

    def metadata_mpp(self) -> float | None:
        return None

    def objective_power(self) -> float | None:
        return None

    def bounds_origin(self) -> tuple[int, int]:
        return (0, 0)

    def read(self, level: int, x0: int, y0: int, width: int, height: int) -> np.ndarray:
        w, h = self._image.size
        inside = (max(x0, 0), max(y0, 0), min(x0 + width, w), min(y0 + height, h))
        if inside == (x0, y0, x0 + width, y0 + height):
            return np.asarray(self._image.crop(inside))
        canvas = Image.new("RGB", (width, height), WHITE)
        if inside[2] > inside[0] and inside[3] > inside[1]:
            canvas.paste(self._image.crop(inside), (inside[0] - x0, inside[1] - y0))
        return np.asarray(canvas)

    def close(self) -> None:
        self._image.close()


def open_backend(path: Path) -> Backend:
    """The reader for `path`: Pillow for plain images, OpenSlide for everything else (plain
    TIFFs that OpenSlide does not take fall back to Pillow)."""
    import openslide

    if not path.exists():
        raise SlideError(f"{path}: no such file")
    if not path.is_file():
        raise SlideError(f"{path}: not a file")
    try:  # the readers would call an unreadable or empty file "not a slide format"
        with open(path, "rb") as f:
            empty = not f.read(1)
    except OSError as exc:
        raise SlideError(f"{path}: cannot read the file ({exc.strerror})") from None
    if empty:
        raise SlideError(f"{path}: the file is empty (0 bytes); copy or download it again")
    suffix = path.suffix.lower()
    if suffix in IMAGE_EXTENSIONS:
        return ImageBackend(path)
    try:
        return OpenSlideBackend(path)
    except openslide.OpenSlideError as exc:
        cut = truncation(path)
        if cut:
            raise SlideError(f"{path}: {cut}") from None
        if not isinstance(exc, openslide.OpenSlideUnsupportedFormatError):
            raise SlideError(f"{path}: cannot open the slide ({exc})") from None
        if suffix in (".tif", ".tiff"):
            return ImageBackend(path)
        raise SlideError(f"{path}: not a slide format OpenSlide can read") from None
