"""`lrmil tile`: the command, its exit codes and messages, and an interrupted run resumed."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
from lrmil.cli.main import app
from PIL import Image
from typer.testing import CliRunner

from lrmil.tiling import read_coords


def _invoke(*args: str):
    return CliRunner().invoke(app, ["tile", *map(str, args)])


def test_tile_a_folder(tmp_path, synth_slide_path):
    src = tmp_path / "slides"
    src.mkdir()
    shutil.copy(synth_slide_path, src / "a.svs")
    result = _invoke(src, "--out", tmp_path / "out", "--patch-size", 128)
    assert result.exit_code == 0, result.output
    assert "skipped" in result.output and "patches" in result.output
    with h5py.File(tmp_path / "out" / "coords" / "a.h5") as f:
        assert f["coords"].attrs["patch_size"] == 128
        assert f["hr/coords"].attrs["patch_size_level0"] == 128
    assert (tmp_path / "out" / "thumbnails" / "a.png").is_file()
    written = (tmp_path / "out" / "coords" / "a.h5").stat().st_mtime_ns
    again = _invoke(src, "--out", tmp_path / "out", "--patch-size", 128)
    assert again.exit_code == 0, again.output
    assert (tmp_path / "out" / "coords" / "a.h5").stat().st_mtime_ns == written  # skipped


def test_a_failed_slide_gives_exit_code_1(tmp_path, synth_slide_path):
    bad = tmp_path / "bad.svs"
    bad.write_text("text")
    result = _invoke(synth_slide_path, bad, "--out", tmp_path / "out")
    assert result.exit_code == 1
    assert "bad.svs: not a slide format OpenSlide can read" in result.output
    assert (tmp_path / "out" / "coords" / f"{synth_slide_path.stem}.h5").is_file()
    assert "bad.svs" in (tmp_path / "out" / "errors.csv").read_text()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--lr-mag", "3"], "--lr-mag 3 must divide --hr-mag 20"),
        (["--mpp", "0.5", "--mpp-csv", "x.csv"], "either --mpp or --mpp-csv"),
        (["--mpp-csv", "missing.csv"], "mpp CSV missing.csv does not exist"),
    ],
)
def test_bad_options(tmp_path, synth_slide_path, args, message):
    result = _invoke(synth_slide_path, "--out", tmp_path / "out", *args)
    assert result.exit_code == 1
    assert message in result.output


def test_mpp_csv_for_plain_images(tmp_path):
    rng = np.random.default_rng(0)
    pixels = np.full((1200, 1200, 3), 236, np.uint8)
    pixels[100:1100, 100:1100] = (190, 100, 160) + rng.integers(0, 20, (1000, 1000, 3))
    Image.fromarray(pixels).save(tmp_path / "img.png")
    (tmp_path / "mpp.csv").write_text("slide,mpp\nimg.png,0.5\n")
    result = _invoke(
        tmp_path / "img.png", "--out", tmp_path / "out", "--mpp-csv", tmp_path / "mpp.csv"
    )
    assert result.exit_code == 0, result.output
    with h5py.File(tmp_path / "out" / "coords" / "img.h5") as f:
        assert f["coords"].shape == (1, 2) and f["coords"].attrs["level0_mpp"] == 0.5


def _datasets(path: Path) -> dict[str, object]:
    """Every dataset and attribute of an HDF5 file, for comparing two runs."""
    with h5py.File(path) as f:
        items: dict[str, object] = {f"/@{k}": v for k, v in f.attrs.items()}

        def visit(name: str, obj: object) -> None:
            for key, value in obj.attrs.items():
                items[f"{name}@{key}"] = value
            if isinstance(obj, h5py.Dataset):
                items[name] = obj[()]

        f.visititems(visit)
    return items


def _assert_same_outputs(a: Path, b: Path) -> None:
    for sub in ("coords", "thumbnails"):
        assert sorted(p.name for p in (a / sub).iterdir()) == sorted(
            p.name for p in (b / sub).iterdir()
        )
    for h5 in (a / "coords").iterdir():
        left, right = _datasets(h5), _datasets(b / "coords" / h5.name)
        assert left.keys() == right.keys()
        for key in left:
            np.testing.assert_array_equal(left[key], right[key], err_msg=f"{h5.name} {key}")
    for png in (a / "thumbnails").iterdir():
        assert np.array_equal(
            np.asarray(Image.open(png)), np.asarray(Image.open(b / "thumbnails" / png.name))
        )


def _lrmil(*args: str | Path) -> list[str]:
    return [sys.executable, "-c", "from lrmil.cli.main import app; app()", *map(str, args)]


@pytest.mark.slow  # three `lrmil tile` processes over 10 slides: 15-30 s on a shared 2-core box
def test_sigint_midway_then_resume_equals_a_clean_run(tmp_path, synth_slide_path):
    src = tmp_path / "slides"
    src.mkdir()
    for i in range(10):
        shutil.copy(synth_slide_path, src / f"s{i}.svs")
    out = tmp_path / "interrupted"
    proc = subprocess.Popen(
        _lrmil("tile", src, "--out", out, "--workers", "2"), stderr=subprocess.PIPE
    )
    deadline = time.monotonic() + 60
    while not any((out / "coords").glob("*.h5")):
        assert proc.poll() is None and time.monotonic() < deadline, "no output appeared"
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr.decode()
    done = list((out / "coords").glob("*.h5"))
    assert 0 < len(done) < 10
    leftovers = [p.name for p in out.rglob("*.tmp-*")]
    assert not leftovers, leftovers  # no temporary files left behind
    assert not list((out / ".claims").iterdir())  # the claims of unfinished slides given back

    rerun = subprocess.run(_lrmil("tile", src, "--out", out), capture_output=True, timeout=120)
    assert rerun.returncode == 0, rerun.stderr.decode()
    clean = subprocess.run(
        _lrmil("tile", src, "--out", tmp_path / "clean"), capture_output=True, timeout=120
    )
    assert clean.returncode == 0, clean.stderr.decode()
    _assert_same_outputs(out, tmp_path / "clean")


def test_config_file_with_flags_winning(tmp_path, synth_slide_path):
    config = tmp_path / "tile.yaml"
    config.write_text("tile:\n  patch_size: 128\n  lr_mag: 10\n  tissue:\n    min_saturation: 30\n")
    result = _invoke(synth_slide_path, "--out", tmp_path / "out", "--config", config, "--lr-mag", 5)
    assert result.exit_code == 0, result.output
    tiled = read_coords(tmp_path / "out" / "coords" / f"{synth_slide_path.stem}.h5")
    assert (tiled.patch_size, tiled.lr_mag, tiled.r) == (128, 5, 4)
    assert tiled.config.tissue.min_saturation == 30
    config.write_text("patch_size: 128\ncolour: blue\n")
    result = _invoke(synth_slide_path, "--out", tmp_path / "out", "--config", config)
    assert result.exit_code == 1
    assert "tile.yaml: unknown setting(s) colour" in result.output


def test_tile_a_synthetic_cohort_from_its_labels_csv(tmp_path, synth_cohort):
    result = _invoke(synth_cohort / "labels.csv", "--out", tmp_path / "out", "--patch-size", 64)
    assert result.exit_code == 0, result.output
    names = [line.split(",")[0] for line in (synth_cohort / "labels.csv").read_text().split()[1:]]
    assert sorted(p.stem for p in (tmp_path / "out" / "coords").iterdir()) == sorted(names)


def test_another_slide_under_the_same_name_is_refused(tmp_path, synth_slide_path):
    """`tile a/s.svs` then `tile b/s.svs` into one --out: the second names both paths and
    leaves the first's outputs; --overwrite replaces them."""
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        shutil.copy(synth_slide_path, tmp_path / folder / "s.svs")
    out = tmp_path / "out"
    assert _invoke(tmp_path / "a" / "s.svs", "--out", out).exit_code == 0
    result = _invoke(tmp_path / "b" / "s.svs", "--out", out)
    assert result.exit_code == 1
    assert (f"{out / 'coords' / 's.h5'} was made from {tmp_path / 'a' / 's.svs'}, not "
            f"{tmp_path / 'b' / 's.svs'}") in result.output.replace("\n", "")
    assert read_coords(out / "coords" / "s.h5").slide_path == str(tmp_path / "a" / "s.svs")
    assert _invoke(tmp_path / "b" / "s.svs", "--out", out, "--overwrite").exit_code == 0
    assert read_coords(out / "coords" / "s.h5").slide_path == str(tmp_path / "b" / "s.svs")


def test_one_file_spelled_two_ways_is_one_slide(tmp_path, synth_slide_path):
    (tmp_path / "a").mkdir()
    shutil.copy(synth_slide_path, tmp_path / "a" / "s.svs")
    spelled = tmp_path / "a" / ".." / "a" / "s.svs"
    result = _invoke(tmp_path / "a" / "s.svs", spelled, "--out", tmp_path / "out")
    assert result.exit_code == 0, result.output
    (record,) = (tmp_path / "out" / "runs").glob("*.json")
    import json

    slides = json.loads(record.read_text())["slides"]
    assert [(s["slide"], s["path"], s["status"]) for s in slides] == [
        ("s", str(tmp_path / "a" / "s.svs"), "ok")]


def test_slides_in_subfolders_need_recursive(tmp_path, synth_slide_path):
    """The GDC layout: one folder per slide. Without --recursive, say what was left out."""
    src = tmp_path / "gdc"
    for i in range(2):
        (src / f"uuid{i}").mkdir(parents=True)
        shutil.copy(synth_slide_path, src / f"uuid{i}" / f"s{i}.svs")
    result = _invoke(src, "--out", tmp_path / "out", "--patch-size", 128)
    assert result.exit_code == 1
    assert "the folder holds no slide files" in result.output
    assert "2 below it in subfolders: add --recursive" in result.output.replace("\n", " ")
    shutil.copy(synth_slide_path, src / "top.svs")
    result = _invoke(src, "--out", tmp_path / "out", "--patch-size", 128)
    assert result.exit_code == 0, result.output
    assert "2 slide file(s) in subfolders were not taken" in result.output.replace("\n", " ")
    assert [p.stem for p in (tmp_path / "out" / "coords").iterdir()] == ["top"]
    result = _invoke(src, "--out", tmp_path / "out", "--patch-size", 128, "--recursive")
    assert result.exit_code == 0, result.output
    assert sorted(p.stem for p in (tmp_path / "out" / "coords").iterdir()) == ["s0", "s1", "top"]


def test_bad_shard_is_one_line(tmp_path, synth_slide_path):
    result = _invoke(synth_slide_path, "--out", tmp_path / "out", "--shard", "2/2")
    assert result.exit_code == 1
    assert result.output.strip() == ("error: --shard must be I/N with 0 <= I < N (e.g. 0/4), "
                                     "got '2/2'")
    assert not (tmp_path / "out").exists()  # refused before anything was written
