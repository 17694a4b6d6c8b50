"""Encoders refuse to run on weights they do not have or cannot trust, in one line, before
anything is written; the features record which weights file made them (SHA-256), and a cohort
whose slides were embedded with other weights under the same encoder name is refused."""

import hashlib
import shutil

import pytest
import torch
from lrmil.cli.main import app
from safetensors.torch import save_file
from typer.testing import CliRunner

from lrmil.data import read_features
from lrmil.distill.cohort import load_cohort
from lrmil.embed import embed_slides
from lrmil.encoders import build
from lrmil.errors import ConfigError, FileFormatError


def _embed(*args):
    return CliRunner().invoke(app, ["embed", *map(str, args)])


@pytest.mark.parametrize("name", ["timm:resnet18", "torchvision:resnet18", "uni",
                                  "conch-vit-b16"])
def test_no_weights_file_is_refused_unless_random_init(name):
    with pytest.raises(ConfigError, match=rf"^encoder {name} has no weights file .*nothing is "
                                          r"downloaded; --random-init"):
        build(name)


def test_random_init_is_seeded_and_excludes_weights(tmp_path):
    x = torch.randint(0, 256, (2, 64, 64, 3), dtype=torch.uint8)
    a, b = (build("torchvision:resnet18", random_init=True, seed=s) for s in (0, 0))
    c = build("torchvision:resnet18", random_init=True, seed=1)
    assert torch.equal(a.encode(x), b.encode(x)) and not torch.allclose(a.encode(x), c.encode(x))
    with pytest.raises(ConfigError, match="--weights and --random-init exclude each other"):
        build("torchvision:resnet18", weights=tmp_path / "w.pt", random_init=True)
    with pytest.raises(ConfigError, match="lrmil-cnn is initialised from --seed"):
        build("lrmil-cnn", random_init=True)


def test_cli_refuses_weightless_and_nan_weights_in_one_line(two_slides_tiled, tmp_path):
    out = tmp_path / "feat"
    result = _embed(two_slides_tiled, "--out", out, "--encoder", "torchvision:resnet18")
    assert result.exit_code == 1 and result.output.strip() == (
        "error: encoder torchvision:resnet18 has no weights file (lrmil embed --weights, distill "
        "stage1.encoder_weights): nothing is downloaded; --random-init uses a random "
        "initialisation (tests, smoke runs)")
    state = dict(build("lrmil-cnn", seed=1).model.state_dict())
    state["stages.1.conv.weight"] = state["stages.1.conv.weight"].clone()
    state["stages.1.conv.weight"][0, 0, 0, 0] = float("nan")
    save_file(state, str(tmp_path / "nan.safetensors"))
    result = _embed(two_slides_tiled, "--out", out, "--weights", tmp_path / "nan.safetensors")
    assert result.exit_code == 1 and result.output.strip() == (
        f"error: weights file {tmp_path / 'nan.safetensors'}: tensor stages.1.conv.weight holds "
        "NaN or inf values")
    assert not out.exists()


def test_inf_in_a_torch_checkpoint_is_refused(tmp_path):
    state = {k: v.clone() for k, v in build("lrmil-cnn").model.state_dict().items()}
    state["stem.bias"][3] = float("-inf")
    torch.save({"state_dict": state}, tmp_path / "ckpt.pth")
    with pytest.raises(FileFormatError, match="ckpt.pth: tensor stem.bias holds NaN or inf"):
        build("lrmil-cnn", weights=tmp_path / "ckpt.pth")


def test_weights_hash_recorded_and_other_weights_refused_by_the_cohort(tiny_tiled, tmp_path):
    files = {}
    for seed in (1, 2):
        files[seed] = tmp_path / f"cnn_seed{seed}.safetensors"
        save_file(build("lrmil-cnn", seed=seed).model.state_dict(), str(files[seed]))
        embed_slides(tiny_tiled / "tiled", "lrmil-cnn", tmp_path / f"feat{seed}",
                     weights=files[seed], layers=["default"])
    attrs = read_features(tmp_path / "feat1" / "lr" / "slide_0000.h5").attrs
    assert attrs["weights_sha256"] == hashlib.sha256(files[1].read_bytes()).hexdigest()
    assert attrs["weights"] == str(files[1].resolve()) and not attrs["random_init"]
    labels = tiny_tiled / "labels.csv"
    load_cohort(tmp_path / "feat1", labels)  # one encoder, one set of weights: accepted
    for name in ("slide_0003", "slide_0006"):  # two slides re-embedded with the other weights
        for mag in ("lr", "hr"):
            shutil.copy2(tmp_path / "feat2" / mag / f"{name}.h5", tmp_path / "feat1" / mag)
    with pytest.raises(FileFormatError, match=r"lr mixes encoders: lrmil-cnn \(weights digest "
                                              r"\w+\) in 5 slide\(s\).* in 2 slide\(s\): "
                                              r"slide_0003, slide_0006"):
        load_cohort(tmp_path / "feat1", labels)
