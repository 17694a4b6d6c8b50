"""`lrmil embed` given bad inputs: one clear line (or one `failed:` line per bad slide while the
others finish), a non-zero exit, no traceback, nothing half-written."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from bad_input_helpers import (
    assert_one_failure,
    assert_one_line,
    assert_usage_error,
    disk_full,
    files_under,
    invoke,
    lines_of,
    no_partial_files,
)

from lrmil.synth.slide import write_slide
from lrmil.tiling import TilingConfig, tile_slides


@pytest.fixture(scope="module")
def tiled_once(tmp_path_factory) -> Path:
    """Two small slides tiled at 32 px (5x / 20x): ROOT/slides/*.svs, ROOT/tiled/coords/*.h5."""
    root = tmp_path_factory.mktemp("embed_bad")
    (root / "slides").mkdir()
    for i, name in enumerate(("good_a", "good_b")):
        write_slide(root / "slides" / f"{name}.svs", 768, 512, seed=i,
                    label=("negative", "positive")[i])
    tile_slides(sorted((root / "slides").glob("*.svs")), root / "tiled",
                TilingConfig(patch_size=32))
    return root


@pytest.fixture
def tiled(tmp_path, tiled_once) -> Path:
    """A copy this test may break (coords files name their slides by absolute path, so the
    slides stay where they were tiled)."""
    shutil.copytree(tiled_once / "tiled", tmp_path / "tiled")
    return tmp_path / "tiled"


def _embed(tiled: Path, out: Path, *args: object):
    return invoke("embed", tiled, "--encoder", "lrmil-cnn", "--mag", "lr", "--device", "cpu",
                  "--out", out, *args)


def _write(path: Path, data: bytes | str) -> Path:
    path.write_bytes(data if isinstance(data, bytes) else data.encode())
    return path


def _foreign_coords(folder: Path, attrs: dict) -> Path:
    folder.mkdir()
    with h5py.File(folder / "slide_1.h5", "w") as f:
        f.create_dataset("coords", data=np.zeros((5, 2), dtype=np.int64)).attrs.update(attrs)
    return folder


def _nan_weights(path: Path) -> Path:
    """lrmil-cnn's state dict with every float tensor full of NaN, as safetensors."""
    from safetensors.torch import save_file

    from lrmil.encoders import build

    state = {k: torch.full_like(v, float("nan")) if v.is_floating_point() else v.clone()
             for k, v in build("lrmil-cnn").model.state_dict().items()}
    save_file(state, str(path))
    return path


def _other_architecture(path: Path) -> Path:
    """lrmil-vit-tiny's weights, given to lrmil-cnn."""
    from safetensors.torch import save_file

    from lrmil.encoders import build

    save_file({k: v.contiguous() for k, v in build("lrmil-vit-tiny").model.state_dict().items()},
              str(path))
    return path


def _state_dict_file(path: Path) -> Path:
    torch.save({"not": "tensors"}, path)
    return path


# (case, make(tmp, tiled) -> (tiled folder, extra args, named in the line))
UP_FRONT = {
    "out is an existing file": lambda tmp, t: (t, ["--out", _write(tmp / "out", "keep me")],
                                               [tmp / "out", "--out must be a folder"]),
    "no coords files": lambda tmp, t: (tmp / "empty", [], ["holds no coords files",
                                                            "lrmil tile"]),
    "a CLAM patches folder": lambda tmp, t: (
        _foreign_coords(tmp / "clam", {"patch_size": 256, "patch_level": 0}), [],
        ["slide_1.h5", "a CLAM coords file", "run `lrmil tile`", f"--lr-grid {tmp / 'clam'}"]),
    "a TRIDENT patches folder": lambda tmp, t: (
        _foreign_coords(tmp / "trident", {"patch_size": 256, "target_magnification": 20,
                                          "patch_size_level0": 256}), [],
        ["slide_1.h5", "a TRIDENT coords file", "at 20x"]),
    "unknown encoder": lambda tmp, t: (t, ["--encoder", "resnet-9000"],
                                       ["unknown encoder 'resnet-9000'"]),
    "weights file missing": lambda tmp, t: (t, ["--weights", tmp / "w.safetensors"],
                                            [tmp / "w.safetensors", "does not exist"]),
    "weights file of text": lambda tmp, t: (t, ["--weights", _write(tmp / "w.pt", "hello")],
                                            [tmp / "w.pt", "cannot be read"]),
    "weights full of NaN": lambda tmp, t: (
        t, ["--weights", _nan_weights(tmp / "nan.safetensors")],
        [f"weights file {tmp / 'nan.safetensors'}: tensor", "holds NaN or inf values"]),
    "weights without tensors": lambda tmp, t: (t, ["--weights", _state_dict_file(tmp / "w.pt")],
                                               [tmp / "w.pt", "no state dict of tensors"]),
    "device gpu": lambda tmp, t: (t, ["--device", "gpu"],
                                  ["--device must be auto, cpu, cuda or cuda:N, got 'gpu'"]),
    "batch size zero": lambda tmp, t: (t, ["--batch-size", 0], ["--batch-size must be >= 1"]),
    "unknown layer": lambda tmp, t: (t, ["--mag", "both", "--layers", "block99"],
                                     ["has no layer block99"]),
    "model argument for a built-in": lambda tmp, t: (t, ["--encoder-arg", "depth=3"],
                                                     ["takes no model arguments"]),
    "shard out of range": lambda tmp, t: (t, ["--shard", "5/2"], ["--shard"]),
    "workers negative": lambda tmp, t: (t, ["--workers", -1], ["--workers must be >= 0", "got -1"]),
    "tiled folder missing": lambda tmp, t: (tmp / "nope", [], [tmp / "nope", "no such folder",
                                                               "lrmil tile"]),
    "tiled folder is a file": lambda tmp, t: (_write(tmp / "afile", "x"), [],
                                              [tmp / "afile", "no such folder"]),
    "weights of another architecture": lambda tmp, t: (
        t, ["--weights", _other_architecture(tmp / "w.safetensors")], [tmp / "w.safetensors"]),
}


@pytest.mark.parametrize("case", UP_FRONT)
def test_refused_before_writing(case, tmp_path, tiled):
    (tmp_path / "empty").mkdir()
    folder, args, named = UP_FRONT[case](tmp_path, tiled)
    base = ["embed", folder, "--encoder", "lrmil-cnn", "--mag", "lr", "--out", tmp_path / "out"]
    base += [] if "--device" in args else ["--device", "cpu"]
    assert_one_line(invoke(*base, *args), *named)
    out = tmp_path / "out"
    assert not out.is_dir() or files_under(out) == []
    if case == "out is an existing file":
        assert out.read_text() == "keep me"


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_cuda_is_one_line(tmp_path, tiled):
    result = invoke("embed", tiled, "--encoder", "lrmil-cnn", "--device", "cuda",
                    "--out", tmp_path / "out")
    assert_one_line(result, "--device cuda", "no CUDA device")
    assert not (tmp_path / "out").exists()


def test_missing_torchvision_names_the_package(tmp_path, tiled, monkeypatch):
    """Where torchvision does not import (here it is installed: hidden from `import`)."""
    for module in ("torchvision", "torchvision.models"):
        monkeypatch.setitem(sys.modules, module, None)  # `import torchvision` now fails
    line = assert_one_line(_embed(tiled, tmp_path / "out", "--encoder", "torchvision:resnet18",
                                  "--random-init"),
                           "needs the 'torchvision' package", "pip install torchvision,")
    assert "torchvision.models)" not in line


def _slide_gone(tiled: Path, tmp: Path) -> Path:
    moved = tmp / "moved.svs"
    slide = Path(h5py.File(tiled / "coords" / "good_b.h5", "r").attrs["slide_path"])
    shutil.copy(slide, moved)
    with h5py.File(tiled / "coords" / "good_b.h5", "a") as f:
        f.attrs["slide_path"] = str(tmp / "nowhere" / "good_b.svs")
    return tiled / "coords" / "good_b.h5"


def _corrupt_coords(tiled: Path, tmp: Path) -> Path:
    return _write(tiled / "coords" / "good_b.h5", b"\x89HDF\r\n\x1a\n" + b"\0" * 100)


def _not_lrmil_coords(tiled: Path, tmp: Path) -> Path:
    path = tiled / "coords" / "good_b.h5"
    with h5py.File(path, "a") as f:
        del f["hr"]
    return path


def _another_slides_coords(tiled: Path, tmp: Path) -> Path:
    """good_a's coords file copied over good_b's: its features would be good_a's under good_b's
    name."""
    shutil.copy(tiled / "coords" / "good_a.h5", tiled / "coords" / "good_b.h5")
    return tiled / "coords" / "good_b.h5"


# One bad slide among good ones: (case, make(tiled, tmp) -> the file named, what it says).
PER_SLIDE = {
    "coords file of another slide": (_another_slides_coords, "holds the grid of slide 'good_a'"),
    "slide moved since tiling": (_slide_gone, "good_b"),
    "corrupt coords file": (_corrupt_coords, "good_b.h5"),
    "coords file without its HR grid": (_not_lrmil_coords, "good_b.h5"),
}


@pytest.mark.parametrize("case", PER_SLIDE)
def test_one_bad_slide_the_others_finish(case, tmp_path, tiled):
    make, says = PER_SLIDE[case]
    named = make(tiled, tmp_path)
    result = _embed(tiled, tmp_path / "out")
    assert result.exit_code == 1
    assert_one_failure(result, says, named.name)
    out = tmp_path / "out"
    assert (out / "lr" / "good_a.h5").is_file() and not (out / "lr" / "good_b.h5").exists()
    assert "good_b" in (out / "errors.csv").read_text()
    no_partial_files(out)


def _scaled_weights(path: Path, factor: float) -> Path:
    """lrmil-cnn's weights times `factor`: finite, so the weights check takes them."""
    from safetensors.torch import save_file

    from lrmil.encoders import build

    state = build("lrmil-cnn").model.state_dict()
    save_file({k: (v * factor).contiguous() for k, v in state.items()}, str(path))
    return path


@pytest.mark.parametrize("factor, dtype, says", [
    (1e7, "float32", "the encoder gave NaN/inf embeddings for"),  # overflow inside the net
    (10.0, "float16", "beyond float16's 65504: store them with --dtype float32"),
])
def test_embeddings_that_cannot_be_stored_fail_their_slides(tmp_path, tiled, factor, dtype,
                                                             says):
    """They were written (NaN, or inf once cast to float16) and stopped distill half way."""
    weights = _scaled_weights(tmp_path / "w.safetensors", factor)
    result = _embed(tiled, tmp_path / "out", "--weights", weights, "--dtype", dtype)
    assert result.exit_code == 1, result.output
    failed = [line for line in lines_of(result) if line.startswith("failed:")]
    assert len(failed) == 2 and all(says in line for line in failed), result.output
    assert list((tmp_path / "out" / "lr").glob("*.h5")) == []
    no_partial_files(tmp_path / "out")


def test_a_full_disk_fails_that_slide_and_leaves_no_partial_file(tmp_path, tiled, monkeypatch):
    disk_full(monkeypatch, "good_b.h5")
    result = _embed(tiled, tmp_path / "out")
    assert_one_failure(result, "good_b.h5", "No space left on device")
    out = tmp_path / "out"
    assert [p.name for p in (out / "lr").iterdir()] == ["good_a.h5"]
    assert "good_b" in (out / "errors.csv").read_text()
    no_partial_files(out)


@pytest.mark.parametrize("args, named", [
    (["embed", "t", "--encoder", "lrmil-cnn", "--mag", "x4"], ["--mag", "'x4'"]),
    (["embed", "t", "--encoder", "lrmil-cnn", "--batchsize", "8"], ["No such option: --batchsize"]),
    (["embed", "--encoder", "lrmil-cnn"], ["Missing argument"]),
    (["embed", "t", "--encoder", "lrmil-cnn", "--workers", "two"], ["--workers", "valid integer"]),
])
def test_a_usage_error_is_one_line_exit_2(args, named):
    assert_usage_error(invoke(*args), "embed", *named)
