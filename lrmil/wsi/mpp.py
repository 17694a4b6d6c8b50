"""Microns per pixel: from the user (a flag or a `slide,mpp` CSV) or from the slide's metadata.

Magnification is always derived as `10 / mpp`; the objective power is only a fallback, and a
slide with neither needs an explicit value: lrmil never guesses."""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

from lrmil.errors import ConfigError, SlideError
from lrmil.utils.csvfile import read_csv

# What a user may pass for the mpp of slides: one value for all, or one per slide name.
MppOverride = float | Mapping[str, float] | None


def check_mpp(value: float, source: str) -> float:
    if not (math.isfinite(value) and value > 0):
        raise ConfigError(f"{source}: mpp must be a positive number, got {value}")
    return float(value)


def load_mpp_csv(path: str | Path) -> dict[str, float]:
    """Read a CSV with columns `slide,mpp` into {slide name: mpp}. The slide column may hold
    names, file names or paths (see `slide_name_in_csv`); a slide given twice is refused."""
    records = read_csv(path, "mpp CSV", ("slide", "mpp")).records()
    if not records:
        raise ConfigError(f"{path}: an mpp CSV needs the columns `slide,mpp` and at least one row")
    table: dict[str, float] = {}
    lines: dict[str, int] = {}
    for line, row in records:
        try:
            value = float(row["mpp"].replace(",", "."))  # a decimal comma (`;` CSVs)
        except (TypeError, ValueError):
            raise ConfigError(f"{path}, line {line}: mpp {row['mpp']!r} is not a number") from None
        name = slide_name_in_csv(row["slide"])
        if name in lines:
            raise ConfigError(f"{path}, line {line}: slide {name!r} is given already on line "
                              f"{lines[name]}")
        lines[name] = line
        table[name] = check_mpp(value, f"{path}, line {line}")
    return table


def slide_name(path: str | Path) -> str:
    """The name a slide goes by in outputs and CSVs: its file name without the extension."""
    return Path(str(path).strip()).stem


def slide_name_in_csv(entry: str) -> str:
    """The slide a CSV cell (labels, mpp) names: a path or file name loses its folder and its
    slide-file extension; a bare name is kept whole (TCGA's names hold dots: 'TCGA-...-DX1.8F9C',
    whose stem would be 'TCGA-...-DX1')."""
    from lrmil.wsi import SLIDE_EXTENSIONS  # the package imports this module first

    path = Path(entry.strip())
    return path.stem if path.suffix.lower() in SLIDE_EXTENSIONS else path.name


def override_for(path: str | Path, override: MppOverride) -> float | None:
    """The user's mpp for this slide, or None to use the slide's own metadata."""
    if override is None or isinstance(override, (int, float)):
        return override
    return override.get(slide_name(path))


def resolve_mpp(
    path: Path, user: float | None, metadata: float | None, objective: float | None
) -> float:
    """User value > metadata mpp > 10 / objective power; none of them -> SlideError."""
    if user is not None:
        return check_mpp(user, str(path))
    if metadata is not None:
        return metadata
    if objective is not None:
        return 10.0 / objective
    raise SlideError(
        f"{path}: the slide records no mpp (microns per pixel) and no objective power; "
        "give it with --mpp or a --mpp-csv file with a `slide,mpp` row"
    )
