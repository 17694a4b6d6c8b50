"""Turning the user's SLIDES arguments (files, folders, globs, CSVs with a `slide` column)
into a list of slide paths, resolved (so one file given two ways is one slide)."""

from __future__ import annotations

import glob
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from lrmil.errors import ConfigError
from lrmil.runner.identity import resolve
from lrmil.utils.csvfile import read_csv
from lrmil.wsi import SLIDE_EXTENSIONS, MppOverride, slide_name


@dataclass
class SlideList:
    paths: list[Path]  # resolved, in the order given, without duplicates
    notes: list[str] = field(default_factory=list)  # e.g. slide files below a folder not taken


def _from_csv(path: Path) -> list[Path]:
    table = read_csv(path, "slide list CSV", ("slide",))
    names = [row["slide"] for _, row in table.records() if row["slide"]]
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


def _is_slide(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in SLIDE_EXTENSIONS and not name.startswith(".")


def _below(folder: Path) -> list[Path]:
    """Slide files in the subfolders of `folder` (any depth; hidden folders skipped)."""
    found = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        if Path(root) != folder:
            found += [Path(root) / f for f in sorted(files) if _is_slide(f)]
    return found


def _from_folder(folder: Path, recursive: bool, notes: list[str]) -> list[Path]:
    top = sorted(p for p in folder.iterdir() if p.is_file() and _is_slide(p.name))
    below = _below(folder)
    if recursive:
        top = sorted(top + below)
    elif below:
        notes.append(f"{folder}: {len(below)} slide file(s) in subfolders were not taken "
                      "(--recursive takes them)")
    if not top:
        hint = f"; {len(below)} below it in subfolders: add --recursive" if below else ""
        raise ConfigError(
            f"{folder}: the folder holds no slide files ({', '.join(SLIDE_EXTENSIONS)}){hint}"
        )
    return top


def collect_slides(inputs: Sequence[str | os.PathLike[str]], *,
                   recursive: bool = False, mpp: MppOverride = None) -> SlideList:
    """Expand inputs in order, without duplicates (judged on resolved paths). Plain paths are
    kept even if missing: a missing slide fails on its own and the others go on. Folders give
    their slide files, and with `recursive` those of their subfolders too (the GDC layout).
    `mpp` as read from --mpp-csv: its rows that name none of the slides get a note (a typo
    there would leave a slide on its metadata's mpp without a word)."""
    slides: list[Path] = []
    notes: list[str] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            slides += _from_folder(path, recursive, notes)
        elif path.suffix.lower() == ".csv" and path.is_file():
            slides += _from_csv(path)
        elif glob.has_magic(str(item)):
            found = sorted(Path(p) for p in glob.glob(str(item), recursive=recursive)
                           if Path(p).is_file())
            if not found:
                raise ConfigError(f"{item}: the pattern matches no files")
            slides += found
        else:
            slides.append(path)
    if not slides:
        raise ConfigError("no slides given")
    unique = list(dict.fromkeys(resolve(p) for p in slides))
    by_name: dict[str, Path] = {}
    for path in unique:
        other = by_name.setdefault(slide_name(path), path)
        if other != path:
            raise ConfigError(
                f"two slides share the name {slide_name(path)!r} ({other} and {path}); "
                "outputs are named by slide, so rename one"
            )
    if isinstance(mpp, Mapping):
        unused = sorted(set(mpp) - set(by_name))
        if unused:
            notes.append(f"--mpp-csv: {len(unused)} row(s) name no slide given here: "
                         f"{', '.join(unused[:5])}{' ...' if len(unused) > 5 else ''} (a slide's "
                         "name is its file name without the extension)")
    return SlideList(unique, notes)
