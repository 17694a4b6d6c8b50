"""Turning the user's SLIDES arguments (files, folders, globs, CSVs with a `slide` column)
into a list of slide paths."""

from __future__ import annotations

import csv
import glob
from collections.abc import Sequence
from pathlib import Path

from lrmil.errors import ConfigError
from lrmil.wsi import SLIDE_EXTENSIONS, slide_name


def _from_csv(path: Path) -> list[Path]:
    try:
        with path.open(newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            if "slide" not in (reader.fieldnames or []):
                raise ConfigError(f"{path}: a slide list CSV needs a `slide` column")
            names = [row["slide"].strip() for row in reader if row["slide"]]
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the slide list ({exc.strerror})") from None
    return [_resolve(name, path.parent) for name in names]


def _resolve(entry: str, folder: Path) -> Path:
    """A CSV entry as a path: relative to the CSV's folder; a bare slide name (as in a
    `labels.csv`) is looked up beside the CSV or in its `slides/` folder."""
    path = Path(entry) if Path(entry).is_absolute() else folder / entry
    if path.exists() or path.suffix.lower() in SLIDE_EXTENSIONS:
        return path
    for candidate in (path.parent, path.parent / "slides"):
        for ext in SLIDE_EXTENSIONS:
            found = candidate / f"{path.name}{ext}"
            if found.is_file():
                return found
    return path  # reported as a missing slide, the others go on


def collect_slides(inputs: Sequence[str | Path]) -> list[Path]:
    """Expand inputs in order, without duplicates. Plain paths are kept even if missing: a
    missing slide fails on its own and the others go on."""
    slides: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.suffix.lower() in SLIDE_EXTENSIONS)
            if not found:
                raise ConfigError(
                    f"{path}: the folder holds no slide files ({', '.join(SLIDE_EXTENSIONS)})"
                )
            slides += found
        elif path.suffix.lower() == ".csv" and path.is_file():
            slides += _from_csv(path)
        elif glob.has_magic(str(item)):
            found = sorted(Path(p) for p in glob.glob(str(item)) if Path(p).is_file())
            if not found:
                raise ConfigError(f"{item}: the pattern matches no files")
            slides += found
        else:
            slides.append(path)
    if not slides:
        raise ConfigError("no slides given")
    unique = list(dict.fromkeys(p.absolute() for p in slides))
    by_name: dict[str, Path] = {}
    for path in unique:
        other = by_name.setdefault(slide_name(path), path)
        if other != path:
            raise ConfigError(
                f"two slides share the name {slide_name(path)!r} ({other} and {path}); "
                "outputs are named by slide, so rename one"
            )
    return unique
