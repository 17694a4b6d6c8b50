"""Tiling real and synthetic slides: grid, children, coords files, thumbnails, bad input."""

from __future__ import annotations

import csv
import json
import os
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image

from lrmil.errors import ConfigError
from lrmil.tiling import NO_TISSUE, TilingConfig, read_coords, tile_slide, tile_slides
from lrmil.tiling.thumbnail import CONTOUR, GRID
from lrmil.tiling.tissue import saturation
from lrmil.wsi import open_slide

LR_ATTRS = {
    "patch_size",
    "patch_size_level0",
    "level0_magnification",
    "target_magnification",
    "level0_mpp",
    "overlap",
    "name",
}


def _check_children(tiled) -> None:
    n, k = len(tiled), tiled.k
    assert tiled.hr_coords.shape == (n, k, 2) and tiled.hr_valid.shape == (n, k)
    assert tiled.lr_patch_size_level0 == tiled.r * tiled.hr_patch_size_level0
    parent = tiled.coords[:, None, :]
    child = tiled.hr_coords
    assert (child >= parent).all()
    assert (child + tiled.hr_patch_size_level0 <= parent + tiled.lr_patch_size_level0).all()
    w, h = tiled.slide_dimensions
    assert (tiled.coords >= 0).all()
    assert (tiled.coords[:, 0] + tiled.lr_patch_size_level0 <= w).all()
    assert (tiled.coords[:, 1] + tiled.lr_patch_size_level0 <= h).all()


@pytest.mark.parametrize("which", ["real", "synthetic"])
def test_tile_slide_writes_readable_outputs(which, real_slide_path, synth_slide_path, tmp_path):
    slide = real_slide_path if which == "real" else synth_slide_path
    summary = tile_slides([slide], tmp_path)
    assert [r.status for r in summary.results] == ["ok"]
    tiled = read_coords(tmp_path / "coords" / f"{slide.stem}.h5")
    assert len(tiled) == summary.patches > 0
    assert tiled.hr_valid.any()
    assert (tiled.r, tiled.k, tiled.patch_size) == (4, 16, 256)
    assert tiled.level0_mpp == pytest.approx(0.499 if which == "real" else 0.5)
    assert tiled.slide_size == slide.stat().st_size
    _check_children(tiled)
    with h5py.File(tmp_path / "coords" / f"{slide.stem}.h5") as f:
        assert f["coords"].dtype == np.int64 and set(f["coords"].attrs) >= LR_ATTRS
        assert set(f["hr/coords"].attrs) >= LR_ATTRS
        assert f["hr/coords"].attrs["target_magnification"] == 20
        assert f["coords"].attrs["target_magnification"] == 5
        assert f["hr/valid"].dtype == bool
        assert json.loads(f.attrs["lrmil_versions"])["lrmil"]
        assert set(json.loads(f.attrs["tissue_params"])) >= {"min_tissue_mm2", "mask_mag"}
        assert f.attrs["slide_mtime"] == slide.stat().st_mtime
    thumb = np.asarray(Image.open(tmp_path / "thumbnails" / f"{slide.stem}.png").convert("RGB"))
    assert min(thumb.shape[:2]) >= 256
    drawn = {colour: (thumb == colour).all(axis=2).sum() for colour in (GRID, CONTOUR)}
    assert drawn[GRID] > 100 and drawn[CONTOUR] > 100  # the grid and the tissue contour


def test_children_validity_follows_their_own_tissue(real_slide_path):
    with open_slide(real_slide_path) as slide:
        tiles = tile_slide(slide, TilingConfig(tissue_threshold=0.1, child_threshold=0.5))
        lr_size, hr_size = tiles.geometry.lr_size0, tiles.geometry.hr_size0
        assert tiles.mask.any()
        for i in range(len(tiles.coords)):
            assert tiles.tissue[i] >= 0.1
            # Each child's validity agrees with the tissue seen when reading it at 20x.
            for k in range(16):
                x, y = tiles.hr_coords[i, k]
                child = slide.read_region(x, y, hr_size, 64)
                stained = (saturation(child) > 40).mean()
                if tiles.hr_valid[i, k]:
                    assert stained > 0.2
                elif stained > 0.5:
                    pytest.fail(f"child {k} of patch {i} is mostly tissue but marked invalid")
        # an LR patch is at least as large as the union of its children
        assert lr_size == 4 * hr_size


def test_lr_patch_matches_mosaic_of_its_children(synth_slide_path):
    """The LR patch at 5x and the 4x4 mosaic of its 20x children, downsampled, agree."""
    with open_slide(synth_slide_path) as slide:
        tiles = tile_slide(slide, TilingConfig())
        geo = tiles.geometry
        i = int(np.argmax(tiles.tissue))
        x, y = tiles.coords[i]
        lr = slide.read_region(x, y, geo.lr_size0, geo.patch_size).astype(np.float64)
        mosaic = np.zeros((4 * 256, 4 * 256, 3), np.uint8)
        for k, (cx, cy) in enumerate(tiles.hr_coords[i]):
            v, u = divmod(k, 4)
            mosaic[v * 256 : (v + 1) * 256, u * 256 : (u + 1) * 256] = slide.read_region(
                cx, cy, geo.hr_size0, geo.patch_size
            )
    small = np.asarray(Image.fromarray(mosaic).reduce(4), dtype=np.float64)
    assert np.abs(small - lr).mean() < 6  # JPEG + pyramid resampling only
    tissue_lr = (saturation(lr.astype(np.uint8)) > 30).mean()
    tissue_mosaic = (saturation(small.astype(np.uint8)) > 30).mean()
    assert tissue_lr > 0.2 and abs(tissue_lr - tissue_mosaic) < 0.03


def _blank_png(path: Path, size: tuple[int, int]) -> Path:
    rng = np.random.default_rng(1)
    pixels = 236 + rng.integers(-4, 5, (size[1], size[0], 3))
    Image.fromarray(pixels.astype(np.uint8)).save(path)
    return path


def test_bad_slides_are_reported_and_the_others_go_on(tmp_path, synth_slide_path):
    src = tmp_path / "in"
    src.mkdir()
    good = shutil.copy(synth_slide_path, src / "good.svs")
    (src / "text.svs").write_text("not a slide")
    data = Path(synth_slide_path).read_bytes()
    (src / "truncated.svs").write_bytes(data[: len(data) // 3])
    _blank_png(src / "nompp.png", (1100, 1100))
    _blank_png(src / "blank.png", (1100, 1100))
    _blank_png(src / "tiny.png", (600, 2000))
    shutil.copy(good, src / "tenx.svs")
    mpp = {"blank": 0.5, "tiny": 0.5, "tenx": 1.0}  # tenx: a 10x scan asked for 20x
    out = tmp_path / "out"
    slides = [src, src / "missing.svs"]
    summary = tile_slides(slides, out, mpp=mpp)

    status = {r.slide: r.status for r in summary.results}
    assert status == {
        "good": "ok",
        "blank": "ok",
        "missing": "failed",
        "text": "failed",
        "truncated": "failed",
        "nompp": "failed",
        "tiny": "failed",
        "tenx": "failed",
    }
    errors = {r.slide: r.error for r in summary.results if r.status == "failed"}
    assert "missing.svs: no such file" in errors["missing"]
    assert "text.svs: not a slide format" in errors["text"]
    assert "truncated.svs" in errors["truncated"]
    assert "nompp.png" in errors["nompp"] and "--mpp" in errors["nompp"]
    assert "smaller than one 5x patch" in errors["tiny"]
    assert "--hr-mag 20x is higher than the scan's 10x" in errors["tenx"]
    empty = [r.slide for r in summary.results if r.note == NO_TISSUE]
    assert (summary.ok, summary.failed, empty) == (2, 6, ["blank"])

    assert read_coords(out / "coords" / "blank.h5").coords.shape == (0, 2)  # a valid result
    written = {p.name for p in (out / "coords").iterdir()} | {
        p.name for p in (out / "thumbnails").iterdir()
    }
    assert written == {"good.h5", "blank.h5", "good.png", "blank.png"}  # nothing half-written
    with open(out / "errors.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert {r["slide"]: r["error"] for r in rows} == errors  # one row per failed slide
    assert {r["slide"]: r["path"] for r in rows}["text"] == str(src / "text.svs")


def test_resume_skips_complete_outputs(tmp_path, synth_slide_path):
    slide = Path(shutil.copy(synth_slide_path, tmp_path / "s.svs"))
    out = tmp_path / "out"
    first = tile_slides([slide], out)
    h5 = out / "coords" / "s.h5"
    before = h5.stat().st_mtime_ns
    assert tile_slides([slide], out).skipped == 1
    assert h5.stat().st_mtime_ns == before
    # A different setting, a changed slide, or --overwrite: tiled again.
    assert tile_slides([slide], out, TilingConfig(tissue_threshold=0.5)).ok == 1
    assert tile_slides([slide], out).ok == 1
    os.utime(slide, (1e9, 1e9))
    again = tile_slides([slide], out)
    assert again.ok == 1 and again.patches == first.patches
    assert tile_slides([slide], out, overwrite=True).ok == 1
    # A new mpp override is a new input; the same one is not.
    assert tile_slides([slide], out, mpp=0.5).ok == 1
    assert tile_slides([slide], out, mpp={"s": 0.5}).skipped == 1
    assert tile_slides([slide], out).ok == 1
    # An incomplete output (no thumbnail) is redone.
    (out / "thumbnails" / "s.png").unlink()
    assert tile_slides([slide], out).ok == 1


def test_workers_give_the_same_outputs(tmp_path, synth_slide_path, real_slide_path):
    slides = [synth_slide_path, real_slide_path]
    one = tile_slides(slides, tmp_path / "one", workers=1)
    two = tile_slides(slides, tmp_path / "two", workers=2)
    assert one.patches == two.patches and two.ok == 2
    for slide in slides:
        a = read_coords(tmp_path / "one" / "coords" / f"{slide.stem}.h5")
        b = read_coords(tmp_path / "two" / "coords" / f"{slide.stem}.h5")
        np.testing.assert_array_equal(a.hr_coords, b.hr_coords)
        np.testing.assert_array_equal(a.hr_valid, b.hr_valid)


def test_unwritable_output_folder(tmp_path, synth_slide_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(ConfigError, match=r"file/out: --out must be a folder, and .*file is an "
                                          r"existing file"):
        tile_slides([synth_slide_path], blocker / "out")



def test_slide_lists(tmp_path, synth_slide_path, real_slide_path):
    from lrmil.tiling import collect_slides

    listing = tmp_path / "slides.csv"
    listing.write_text(f"slide,label\n{synth_slide_path},1\n{real_slide_path},0\n")
    assert collect_slides([listing]).paths == [synth_slide_path, real_slide_path]
    # A labels.csv names slides without paths: found beside the CSV or in its slides/ folder.
    (tmp_path / "slides").mkdir()
    shutil.copy(synth_slide_path, tmp_path / "slides" / "a.svs")
    labels = tmp_path / "labels.csv"
    labels.write_text("slide,patient,label\na,p0,positive\nghost,p1,negative\n")
    assert collect_slides([labels]).paths == [tmp_path / "slides" / "a.svs", tmp_path / "ghost"]
    pattern = str(synth_slide_path.parent / "*.svs")
    assert synth_slide_path in collect_slides([pattern]).paths
    with pytest.raises(ConfigError, match="matches no files"):
        collect_slides([str(tmp_path / "*.svs")])
    shutil.copy(synth_slide_path, tmp_path / f"{real_slide_path.stem}.svs")
    with pytest.raises(ConfigError, match="share the name"):
        collect_slides([real_slide_path, tmp_path / f"{real_slide_path.stem}.svs"])


def test_an_unexpected_error_fails_only_its_slide(tmp_path, synth_slide_path, monkeypatch):
    import lrmil.tiling.tiler as tiler

    real = tiler.tile_slide

    def flaky(slide, config, **kwargs):
        if slide.name == "broken":
            raise ValueError("odd file")
        return real(slide, config, **kwargs)

    monkeypatch.setattr(tiler, "tile_slide", flaky)
    broken = shutil.copy(synth_slide_path, tmp_path / "broken.svs")
    summary = tile_slides([broken, synth_slide_path], tmp_path / "out")
    assert [r.status for r in summary.results] == ["failed", "ok"]
    assert "broken.svs: unexpected ValueError: odd file" in summary.results[0].error


def test_read_coords_refuses_other_files(tmp_path):
    from lrmil.errors import FileFormatError

    with pytest.raises(FileFormatError, match=r"none\.h5: no such coords file"):
        read_coords(tmp_path / "none.h5")
    with h5py.File(tmp_path / "clam.h5", "w") as f:
        f.create_dataset("coords", data=np.zeros((3, 2), np.int64))
    with pytest.raises(FileFormatError, match=r"clam\.h5: not a complete lrmil coords file"):
        read_coords(tmp_path / "clam.h5")


def test_a_dead_worker_does_not_stop_the_run(tmp_path, synth_slide_path):
    """A worker killed mid-run (as by a crash in a native reader): its slides are retried
    one by one in processes of their own, and the run completes."""
    import multiprocessing
    import signal
    import threading
    import time

    slides = [shutil.copy(synth_slide_path, tmp_path / f"s{i}.svs") for i in range(4)]
    done: dict[str, object] = {}
    run = threading.Thread(
        target=lambda: done.update(summary=tile_slides(slides, tmp_path / "out", workers=2))
    )
    run.start()
    deadline = time.monotonic() + 60
    while not (children := multiprocessing.active_children()):
        assert time.monotonic() < deadline, "no worker started"
        time.sleep(0.005)
    os.kill(children[0].pid, signal.SIGKILL)
    run.join(timeout=180)
    summary = done["summary"]
    assert sorted(r.slide for r in summary.results) == ["s0", "s1", "s2", "s3"]
    assert summary.ok == 4  # the slides themselves are fine: the retries succeed
