import pytest
import torch
from safetensors.torch import save_file

from lrmil.encoders import build
from lrmil.errors import FileFormatError

X = torch.randint(
    0, 256, (2, 64, 64, 3), generator=torch.Generator().manual_seed(0), dtype=torch.uint8
)


@pytest.mark.parametrize("name", ["lrmil-cnn", "lrmil-vit-tiny"])
def test_safetensors_round_trip(tmp_path, name):
    trained = build(name, seed=3)
    path = tmp_path / "w.safetensors"
    save_file(trained.model.state_dict(), str(path))
    loaded = build(name, weights=path, seed=0)
    assert torch.equal(loaded.encode(X), trained.encode(X))
    assert not torch.equal(build(name, seed=0).encode(X), trained.encode(X))


def test_torch_state_dict_nested_and_prefixed(tmp_path):
    trained = build("lrmil-cnn", seed=5)
    path = tmp_path / "ckpt.pth"
    state = {f"module.{k}": v for k, v in trained.model.state_dict().items()}
    torch.save({"state_dict": state, "epoch": 3}, path)
    assert torch.equal(build("lrmil-cnn", weights=path).encode(X), trained.encode(X))


def test_weights_of_another_architecture(tmp_path):
    path = tmp_path / "vit.safetensors"
    save_file(build("lrmil-vit-tiny").model.state_dict(), str(path))
    with pytest.raises(
        FileFormatError,
        match=r"vit.safetensors does not fit encoder lrmil-cnn: missing \d+ keys \(stage",
    ):
        build("lrmil-cnn", weights=path)


def test_wrong_shape_is_named(tmp_path):
    state = dict(build("lrmil-cnn").model.state_dict())
    state["stem.weight"] = torch.zeros(16, 3, 7, 7)
    path = tmp_path / "w.safetensors"
    save_file(state, str(path))
    with pytest.raises(
        FileFormatError, match=r"wrong shapes.*stem.weight \(16, 3, 7, 7\) vs \(32, 3, 7, 7\)"
    ):
        build("lrmil-cnn", weights=path)


def test_missing_and_corrupt_files(tmp_path):
    with pytest.raises(FileFormatError, match="nope.safetensors does not exist"):
        build("lrmil-cnn", weights=tmp_path / "nope.safetensors")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a safetensors file")
    with pytest.raises(FileFormatError, match="bad.safetensors cannot be read"):
        build("lrmil-cnn", weights=bad)
