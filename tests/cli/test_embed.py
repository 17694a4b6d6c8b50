import csv
import os
import shutil

import h5py
import numpy as np
import pytest
from lrmil.cli.embed import parse_encoder_args
from lrmil.cli.main import app
from typer.testing import CliRunner

from lrmil.data import read_features
from lrmil.errors import ConfigError
from lrmil.synth.slide import write_slide
from lrmil.tiling import TilingConfig, read_coords, tile_slides


@pytest.fixture
def tiled(tmp_path_factory):
    """Two small slides (20x) tiled at 64 px, in a folder this test may modify."""
    root = tmp_path_factory.mktemp("embed_cli")
    for i in range(2):
        write_slide(root / f"s{i}.svs", 1024, 768, seed=i, label=("negative", "positive")[i])
    tile_slides([root / "s0.svs", root / "s1.svs"], root / "tiled", TilingConfig(patch_size=64))
    return root / "tiled"


def _embed(*args):
    return CliRunner().invoke(app, ["embed", *map(str, args)])


def _counts(out):
    """The status counts of the latest run record in OUT/runs."""
    import json

    latest = max((out / "runs").glob("*.json"), key=lambda p: p.stat().st_mtime_ns)
    return json.loads(latest.read_text())["counts"]


def test_embed_both_magnifications_then_resume(tiled, tmp_path):
    out = tmp_path / "feat"
    result = _embed(tiled, "--out", out, "--layers", "default", "--batch-size", "16",
                    "--layers-dtype", "float16")
    assert result.exit_code == 0, result.output
    assert _counts(out) == {"ok": 2, "skipped": 0, "failed": 0, "claimed-elsewhere": 0}
    for name in ("s0", "s1"):
        ts = read_coords(tiled / "coords" / f"{name}.h5")
        lr = read_features(out / "lr" / f"{name}.h5", dim=256)
        hr = read_features(out / "hr" / f"{name}.h5", dim=256)
        np.testing.assert_array_equal(lr.coords, ts.coords)
        assert hr.attrs["magnification"] == 20.0 and lr.attrs["magnification"] == 5.0
        assert lr.attrs["encoder"] == "lrmil-cnn" and hr.attrs["patch_size"] == 64
        assert lr.attrs["seed"] == 0 and lr.attrs["weights"] == "" and hr.attrs["r"] == 4
        # Every valid child exactly once, linked to its parent row and child index.
        assert len(hr) == ts.hr_valid.sum()
        assert ts.hr_valid[hr.parent, hr.child].all()
        np.testing.assert_array_equal(hr.coords, ts.hr_coords[hr.parent, hr.child])
        assert sorted(hr.layers) == ["stage2", "stage3"] and not lr.layers
        with h5py.File(out / "hr" / f"{name}.h5") as fh:  # teacher layers as asked
            assert fh["features"].dtype == np.float32
            assert {fh[f"layers/{k}"].dtype for k in hr.layers} == {np.dtype(np.float16)}
        assert hr.attrs["layers_dtype"] == "float16"
    mtime = (out / "lr" / "s0.h5").stat().st_mtime
    again = _embed(tiled, "--out", out, "--layers", "default", "--batch-size", "16")
    assert again.exit_code == 0 and _counts(out)["skipped"] == 2
    assert (out / "lr" / "s0.h5").stat().st_mtime == mtime
    changed = _embed(tiled, "--out", out, "--mag", "lr", "--seed", "1")
    assert changed.exit_code == 0 and _counts(out)["ok"] == 2, "other weights must be redone"


def test_coords_of_another_slide_fails_only_that_slide(tiled, tmp_path):
    slide = read_coords(tiled / "coords" / "s1.h5").slide_path
    shutil.copy(read_coords(tiled / "coords" / "s0.h5").slide_path, slide)  # s1 replaced
    os.utime(slide, (1, 1))
    out = tmp_path / "feat"
    result = _embed(tiled, "--out", out, "--mag", "lr")
    assert result.exit_code == 1
    assert "s1.h5 was made from another version of" in result.output
    assert (out / "lr" / "s0.h5").is_file() and not (out / "lr" / "s1.h5").exists()
    with open(out / "errors.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["slide"] for r in rows] == ["s1"]
    assert rows[0]["error"].startswith(f"coords file {tiled / 'coords' / 's1.h5'} was made from")
    assert rows[0]["path"] == str(tiled / "coords" / "s1.h5")


def test_bad_arguments_are_one_line(tiled, tmp_path):
    result = _embed(tiled, "--out", tmp_path, "--encoder", "nope")
    assert (
        result.exit_code == 1
        and "unknown encoder 'nope'; known encoders: lrmil-cnn" in result.output
    )
    result = _embed(tmp_path, "--out", tmp_path / "f")
    assert result.exit_code == 1 and "holds no coords files" in result.output
    result = _embed(tiled, "--out", tmp_path, "--layers", "stage9")
    assert result.exit_code == 1 and "no layer stage9" in result.output
    result = _embed(tiled, "--out", tmp_path, "--weights", tmp_path / "w.safetensors")
    assert result.exit_code == 1 and "w.safetensors does not exist" in result.output
    (tmp_path / "taken").write_text("a file")
    result = _embed(tiled, "--out", tmp_path / "taken")
    assert result.exit_code == 1 and result.output.strip() == (
        f"error: {tmp_path / 'taken'}: --out must be a folder, and this is an existing file")
    for device in ("gpu", "cuda:x"):
        result = _embed(tiled, "--out", tmp_path / "f", "--device", device)
        assert result.exit_code == 1
        assert f"--device must be auto, cpu, cuda or cuda:N, got '{device}'" in result.output
    result = _embed(tiled, "--out", tmp_path / "f", "--shard", "1/1")
    assert result.exit_code == 1 and "--shard must be I/N" in result.output
    assert not (tmp_path / "f").exists()


def test_parse_encoder_args():
    assert parse_encoder_args(["init_values=1e-5", "dynamic_img_size=true", "act=gelu"]) == {
        "init_values": 1e-5,
        "dynamic_img_size": True,
        "act": "gelu",
    }
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        parse_encoder_args(["novalue"])


def test_weights_round_trip_through_the_cli(tiled, tmp_path):
    from safetensors.torch import save_file

    from lrmil.encoders import build

    save_file(build("lrmil-vit-tiny", seed=3).model.state_dict(), str(tmp_path / "w.safetensors"))
    args = [tiled, "--encoder", "lrmil-vit-tiny", "--mag", "lr"]
    assert _embed(*args, "--out", tmp_path / "a", "--seed", "3").exit_code == 0
    result = _embed(*args, "--out", tmp_path / "b", "--weights", tmp_path / "w.safetensors")
    assert result.exit_code == 0, result.output
    a, b = (read_features(tmp_path / d / "lr" / "s1.h5") for d in "ab")
    np.testing.assert_array_equal(a.features, b.features)
    assert b.attrs["weights"] == str(tmp_path / "w.safetensors")
