"""`lrmil tile` given bad inputs: one clear line (or one `failed:` line per bad slide while the
others finish), a non-zero exit, no traceback, nothing half-written."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from bad_input_helpers import (
    assert_one_error_after_work,
    assert_one_failure,
    assert_one_line,
    assert_usage_error,
    disk_full,
    files_under,
    invoke,
    lines_of,
    no_partial_files,
    unreadable,
)
from PIL import Image

from lrmil.synth.slide import write_slide


@pytest.fixture(scope="module")
def good_slides(tmp_path_factory) -> Path:
    """Two small 20x slides, written once; cases copy them."""
    root = tmp_path_factory.mktemp("tile_good")
    for i, name in enumerate(("good_a", "good_b")):
        write_slide(root / f"{name}.svs", 768, 512, seed=i, label=("negative", "positive")[i])
    return root


@pytest.fixture
def slides(tmp_path, good_slides) -> Path:
    folder = tmp_path / "slides"
    shutil.copytree(good_slides, folder)
    return folder


def _tile(*args: object):
    return invoke("tile", *args, "--patch-size", 64)


def _write(path: Path, data: bytes | str) -> Path:
    path.write_bytes(data if isinstance(data, bytes) else data.encode())
    return path


# Inputs refused before anything is written: (case, make(tmp, slides) -> (args, named)).
UP_FRONT = {
    "out is an existing file": lambda tmp, s: (
        [s, "--out", _write(tmp / "out", "keep me")], [tmp / "out", "--out must be a folder"]),
    "out below an existing file": lambda tmp, s: (
        [s, "--out", _write(tmp / "file", "") / "out"], ["--out must be a folder"]),
    "mpp CSV not UTF-8": lambda tmp, s: (
        [s, "--out", tmp / "out", "--mpp-csv", _write(tmp / "mpp.csv", b"slide,mpp\n\xe9,0.5\n")],
        [tmp / "mpp.csv", "line 2: not UTF-8"]),
    "mpp CSV without an mpp column": lambda tmp, s: (
        [s, "--out", tmp / "out", "--mpp-csv", _write(tmp / "mpp.csv", "slide,um\na,0.5\n")],
        [tmp / "mpp.csv", "slide,mpp"]),
    "mpp CSV with a word for a number": lambda tmp, s: (
        [s, "--out", tmp / "out", "--mpp-csv", _write(tmp / "mpp.csv", "slide,mpp\na,half\n")],
        [tmp / "mpp.csv", "line 2", "'half'"]),
    "mpp zero": lambda tmp, s: ([s, "--out", tmp / "out", "--mpp", 0], ["mpp must be a positive"]),
    "mpp and mpp CSV": lambda tmp, s: (
        [s, "--out", tmp / "out", "--mpp", 0.5, "--mpp-csv", tmp / "mpp.csv"],
        ["either --mpp or --mpp-csv"]),
    "config not UTF-8": lambda tmp, s: (
        [s, "--out", tmp / "out", "--config", _write(tmp / "t.yaml", b"lr_mag: 5 # \xe9\n")],
        [tmp / "t.yaml", "not UTF-8"]),
    "config with an unknown setting": lambda tmp, s: (
        [s, "--out", tmp / "out", "--config", _write(tmp / "t.yaml", "lr_magg: 5\n")],
        [tmp / "t.yaml", "lr_magg"]),
    "config that does not parse": lambda tmp, s: (
        [s, "--out", tmp / "out", "--config", _write(tmp / "t.toml", "lr_mag = = 5\n")],
        [tmp / "t.toml", "cannot be parsed"]),
    "tissue threshold above 1": lambda tmp, s: (
        [s, "--out", tmp / "out", "--tissue-threshold", 2], ["--tissue-threshold must be in"]),
    "magnifications not a multiple": lambda tmp, s: (
        [s, "--out", tmp / "out", "--lr-mag", 5, "--hr-mag", 12], ["--lr-mag 5 must divide"]),
    "slide list CSV without a slide column": lambda tmp, s: (
        [_write(tmp / "list.csv", "path\na.svs\n"), "--out", tmp / "out"],
        [tmp / "list.csv", "slide"]),
    "shard out of range": lambda tmp, s: (
        [s, "--out", tmp / "out", "--shard", "2/2"], ["--shard"]),
    "lr grid folder missing": lambda tmp, s: (
        [s, "--out", tmp / "out", "--lr-grid", tmp / "patches"],
        ["--lr-grid", tmp / "patches", "no such folder"]),
    "config with a word for a number": lambda tmp, s: (
        [s, "--out", tmp / "out", "--config", _write(tmp / "t.yaml", "patch_size: big\n")],
        [tmp / "t.yaml", "patch_size must be an integer, got 'big'"]),
    "config whose tissue section is a number": lambda tmp, s: (
        [s, "--out", tmp / "out", "--config", _write(tmp / "t.yaml", "tissue: 5\n")],
        [tmp / "t.yaml", "tissue must be a mapping"]),
    "config with a mistyped tissue setting": lambda tmp, s: (
        [s, "--out", tmp / "out", "--config", _write(tmp / "t.yaml", "tissue:\n  blurr: 3\n")],
        [tmp / "t.yaml", "unknown setting(s) tissue.blurr", "tissue.close_um"]),
    "config with a NaN tissue setting": lambda tmp, s: (
        [s, "--out", tmp / "out", "--config",
         _write(tmp / "t.yaml", "tissue:\n  close_um: .nan\n")],
        ["tissue.close_um must be >= 0, got nan"]),
    "mpp CSV naming a slide twice": lambda tmp, s: (
        [s, "--out", tmp / "out", "--mpp-csv",
         _write(tmp / "mpp.csv", "slide,mpp\ngood_a,0.5\ngood_a.svs,0.25\n")],
        [tmp / "mpp.csv", "line 3", "'good_a' is given already on line 2"]),
    "slide list CSV that is empty": lambda tmp, s: (
        [_write(tmp / "list.csv", ""), "--out", tmp / "out"], [tmp / "list.csv", "is empty"]),
    "a folder without slides": lambda tmp, s: (
        [(tmp / "none").mkdir() or tmp / "none", "--out", tmp / "out"],
        [tmp / "none", "holds no slide files"]),
    "a glob matching nothing": lambda tmp, s: (
        [f"{s}/*.ndpi", "--out", tmp / "out"], ["*.ndpi", "matches no files"]),
}


@pytest.mark.parametrize("case", UP_FRONT)
def test_refused_before_writing(case, tmp_path, slides):
    args, named = UP_FRONT[case](tmp_path, slides)
    assert_one_line(_tile(*args), *named)
    out = tmp_path / "out"
    assert not out.is_dir() or files_under(out) == []
    if case == "out is an existing file":
        assert out.read_text() == "keep me"


def _truncated(folder: Path) -> Path:
    data = (folder / "good_a.svs").read_bytes()
    return _write(folder / "bad.svs", data[: len(data) // 2])


def _not_a_slide(folder: Path) -> Path:
    return _write(folder / "bad.svs", "this is a text file\n")


def _no_resolution(folder: Path) -> Path:
    path = folder / "bad.png"
    Image.new("RGB", (600, 400), (200, 120, 160)).save(path)
    return path


def _scanned_at_10x(folder: Path) -> Path:
    path = folder / "bad.svs"
    write_slide(path, 512, 512, seed=3, mpp=1.0)  # 10x: no 20x children
    return path


def _empty(folder: Path) -> Path:
    return _write(folder / "bad.svs", b"")


# One bad slide among good ones: (case, make(folder) -> bad slide, what its line says).
PER_SLIDE = {
    "truncated slide": (_truncated, "looks truncated"),
    "empty slide file": (_empty, "the file is empty (0 bytes)"),
    "not a slide": (_not_a_slide, "not a slide format OpenSlide can read"),
    "no resolution": (_no_resolution, "--mpp"),
    "scanned below --hr-mag": (_scanned_at_10x, "20x"),
}


@pytest.mark.parametrize("case", PER_SLIDE)
def test_one_bad_slide_the_others_finish(case, tmp_path, slides):
    make, says = PER_SLIDE[case]
    bad = make(slides)
    result = _tile(slides, "--out", tmp_path / "out")
    assert result.exit_code == 1
    assert_one_failure(result, bad, says)
    out = tmp_path / "out"
    assert sorted(p.name for p in (out / "coords").iterdir()) == ["good_a.h5", "good_b.h5"]
    assert "bad" in (out / "errors.csv").read_text()
    no_partial_files(out)


def _grid(folder: Path, name: str, coords=((0, 0), (256, 0)), **attrs: object) -> Path:
    """A TRIDENT coords file (patches/<name>_patches.h5) for a 768 x 512 slide at 20x: 64 px
    patches at 5x, lrmil's LR grid here; `attrs` change or (None) drop TRIDENT's attrs."""
    import h5py
    import numpy as np

    path = folder / "patches" / f"{name}_patches.h5"
    path.parent.mkdir(parents=True, exist_ok=True)
    values = {"patch_size": 64, "patch_size_level0": 256, "level0_magnification": 20,
              "target_magnification": 5, "overlap": 0, "name": name, "level0_width": 768,
              "level0_height": 512, **attrs}
    with h5py.File(path, "w") as f:
        f.create_dataset("coords", data=np.asarray(coords, dtype=np.int64)).attrs.update(
            {k: v for k, v in values.items() if v is not None})
    return path


def _clam_level_5(folder: Path, name: str) -> Path:
    import h5py
    import numpy as np

    path = folder / f"{name}.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("coords", data=np.zeros((2, 2), np.int64)).attrs.update(
            {"patch_size": 256, "patch_level": 5, "name": name})
    return path


def _not_coords(folder: Path, name: str) -> Path:
    import h5py

    path = folder / f"{name}.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("features", data=[1.0, 2.0])
    return path


# good_b's grid file is bad, good_a's is right: (case, make(folder) -> file named, says).
BAD_GRIDS = {
    "grid at 20x": (lambda d: _grid(d, "good_b", target_magnification=20, patch_size_level0=64),
                    "cover 64 px of level 0, an lrmil LR patch (64 px at 5x) covers 256"),
    "level-0 side not divisible by r": (lambda d: _grid(d, "good_b", patch_size_level0=254),
                                        "254 px is not divisible by r = 4"),
    "a patch outside the slide": (lambda d: _grid(d, "good_b", coords=((0, 0), (600, 0))),
                                  "1 patch(es) lie outside the 768x512 px slide"),
    "made for another scan": (lambda d: _grid(d, "good_b", level0_width=1000),
                              "made for a 1000x512 px slide"),
    "made at another level-0 magnification": (
        lambda d: _grid(d, "good_b", level0_magnification=40), "made for a 40x level 0"),
    "CLAM at a level the slide lacks": (lambda d: _clam_level_5(d, "good_b"),
                                        "patch_level 5 is not a level of the slide"),
    "not a CLAM or TRIDENT file": (lambda d: _not_coords(d, "good_b"),
                                   "not a CLAM or TRIDENT coords file"),
    "no grid file for the slide": (lambda d: d / "good_b_patches.h5",
                                   "no coords file for slide good_b"),
}


@pytest.mark.parametrize("case", BAD_GRIDS)
def test_a_bad_lr_grid_fails_its_slide_and_the_others_finish(case, tmp_path, slides):
    grids = tmp_path / "grids"
    _grid(grids, "good_a")
    make, says = BAD_GRIDS[case]
    named = make(grids)
    result = _tile(slides, "--out", tmp_path / "out", "--lr-grid", grids)
    assert result.exit_code == 1
    assert_one_failure(result, named.name, says)
    out = tmp_path / "out"
    assert sorted(p.name for p in (out / "coords").iterdir()) == ["good_a.h5"]
    assert "good_b" in (out / "errors.csv").read_text()
    no_partial_files(out)


def test_an_unreadable_slide_is_named_and_the_others_finish(tmp_path, slides, monkeypatch):
    """chmod 000 (for a user other than root): it was 'not a slide format OpenSlide can read'."""
    bad = shutil.copy(slides / "good_b.svs", slides / "bad.svs")
    unreadable(monkeypatch, Path(bad))
    result = _tile(slides, "--out", tmp_path / "out")
    assert_one_failure(result, bad, "cannot read the file (Permission denied)")
    assert len(list((tmp_path / "out" / "coords").glob("*.h5"))) == 2
    no_partial_files(tmp_path / "out")


def test_a_full_disk_fails_that_slide_and_leaves_no_partial_file(tmp_path, slides, monkeypatch):
    disk_full(monkeypatch, "good_b.h5")
    result = _tile(slides, "--out", tmp_path / "out")
    assert_one_failure(result, "good_b.h5", "No space left on device")
    assert [p.name for p in (tmp_path / "out" / "coords").iterdir()] == ["good_a.h5"]
    assert "good_b" in (tmp_path / "out" / "errors.csv").read_text()
    no_partial_files(tmp_path / "out")


def test_a_full_disk_for_the_records_is_one_line(tmp_path, slides, monkeypatch):
    """After the slides (their progress bar above it): one error line naming the file."""
    disk_full(monkeypatch, "errors.csv")
    result = _tile(slides, "--out", tmp_path / "out")
    assert_one_error_after_work(result, "No space left on device",
                                f"'{tmp_path / 'out' / 'errors.csv'}'")
    assert len(list((tmp_path / "out" / "coords").glob("*.h5"))) == 2
    no_partial_files(tmp_path / "out")


def test_synth_on_a_full_disk_is_one_line(tmp_path, monkeypatch):
    """The level-1 scratch memmap is allocated up front: a full disk was a SIGBUS (exit 135,
    no message) when a page of it was first written."""
    import errno
    import os

    def full(fd, offset, length):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "posix_fallocate", full, raising=False)
    out = tmp_path / "cohort"
    result = invoke("synth", out, "--slides", 2, "--size", 512, "--workers", 1)
    assert_one_error_after_work(result, out / "slides" / "slide_0000.svs",
                                "No space left on device")
    assert files_under(out) == []


def test_a_missing_slide_is_named_and_the_others_finish(tmp_path, slides):
    missing = tmp_path / "elsewhere" / "gone.svs"
    result = _tile(slides / "good_a.svs", missing, "--out", tmp_path / "out")
    assert_one_failure(result, missing)
    assert (tmp_path / "out" / "coords" / "good_a.h5").is_file()


def test_slides_only_in_subfolders_are_counted_and_recursive_takes_them(tmp_path, slides):
    """The GDC layout (one folder per slide): without --recursive, one line says how many
    slide files lie below and how to take them."""
    gdc = tmp_path / "gdc"
    for name in ("good_a", "good_b"):
        (gdc / f"uuid-{name}").mkdir(parents=True)
        shutil.copy(slides / f"{name}.svs", gdc / f"uuid-{name}" / f"{name}.svs")
    line = assert_one_line(_tile(gdc, "--out", tmp_path / "out"), gdc)
    assert "2" in line and "--recursive" in line
    result = _tile(gdc, "--out", tmp_path / "out", "--recursive")
    assert result.exit_code == 0, result.output
    assert len(list((tmp_path / "out" / "coords").glob("*.h5"))) == 2


def test_spreadsheet_csvs_and_slide_names_with_dots(tmp_path, slides):
    """A slide list and an mpp CSV saved by Excel ("CSV UTF-8": BOM, `;`, decimal commas); an
    mpp row naming a TCGA-style slide by its bare name (dots in it: not an extension) is used,
    one naming no slide given gets a note."""
    dotted = slides / "TCGA-A1-01Z-DX1.8F9C.svs"
    write_slide(dotted, 768, 512, seed=5, mpp=0.25)  # 40x, recorded; the CSV says the same
    listing = _write(tmp_path / "list.csv", b"\xef\xbb\xbfslide;note\r\ngood_a.svs;x\r\n"
                     + dotted.name.encode() + b";y\r\n")
    shutil.copy(listing, slides / "list.csv")
    mpp = _write(tmp_path / "mpp.csv", b"\xef\xbb\xbfslide;mpp\r\nTCGA-A1-01Z-DX1.8F9C;0,5\r\n"
                 b"good_aa;0,5\r\n")
    result = _tile(slides / "list.csv", "--out", tmp_path / "out", "--mpp-csv", mpp)
    assert result.exit_code == 0, result.output
    import h5py

    with h5py.File(tmp_path / "out" / "coords" / "TCGA-A1-01Z-DX1.8F9C.h5") as f:
        assert f["coords"].attrs["level0_mpp"] == 0.5  # the CSV's, not the metadata's 0.25
    assert sorted(p.name for p in (tmp_path / "out" / "coords").iterdir()) == [
        "TCGA-A1-01Z-DX1.8F9C.h5", "good_a.h5"]
    notes = [line for line in lines_of(result) if "--mpp-csv" in line]
    assert len(notes) == 1 and "1 row(s) name no slide given here: good_aa" in notes[0], notes


def test_debug_anywhere_shows_the_traceback(tmp_path, slides):
    from lrmil.errors import ConfigError

    for args in (["--debug", "tile", slides], ["tile", slides, "--debug"]):
        result = invoke(*args, "--out", tmp_path / "out", "--mpp", 0)
        assert isinstance(result.exception, ConfigError), result.output
    assert_one_line(invoke("tile", slides, "--out", tmp_path / "out", "--mpp", 0), "mpp")


# Mistyped command lines: (case, args, named in the line); `lrmil ...` itself for "".
USAGE = {
    "unknown option": (["tile", "s.svs", "--out", "o", "--lr-magg", "5"],
                       "tile", ["No such option: --lr-magg"]),
    "missing --out": (["tile", "s.svs"], "tile", ["Missing option '--out'"]),
    "missing SLIDES": (["tile", "--out", "o"], "tile", ["Missing argument"]),
    "a word for a number": (["tile", "s.svs", "--out", "o", "--patch-size", "big"], "tile",
                            ["--patch-size", "valid integer"]),
    "unknown command": (["tlie", "s.svs"], "", ["No such command 'tlie'", "'tile'"]),
    "unknown option before the command": (["--verbose", "tile"], "", ["--verbose"]),
    "workers zero": (["tile", "s.svs", "--out", "o", "--workers", "0"], "tile",
                     ["--workers", "greater than or equal to 1"]),
    "workers negative": (["tile", "s.svs", "--out", "o", "--workers", "-2"], "tile",
                         ["--workers", "greater than or equal to 1"]),
}


@pytest.mark.parametrize("case", USAGE)
def test_a_usage_error_is_one_line_exit_2(case, tmp_path):
    args, command, named = USAGE[case]
    assert_usage_error(invoke(*args), command, *named)
    assert not (tmp_path / "o").exists()


def test_help_still_works():
    for args in (["--help"], ["tile", "--help"]):
        result = invoke(*args)
        assert result.exit_code == 0 and "Usage" in result.output, result.output
