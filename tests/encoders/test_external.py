"""timm / torchvision adapters, driven through stand-in modules (small and fast; the real
packages are in test_real_models.py): hooks find the layers, weights load from a local file
only, pretrained is never asked for."""

import sys
import types

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from lrmil.encoders import build
from lrmil.encoders.external import import_torchvision
from lrmil.encoders.vit import TinyViT
from lrmil.errors import ConfigError, FileFormatError

CALLS = []


def _fake_timm():
    def create_model(arch, pretrained, num_classes, **kwargs):
        CALLS.append((arch, pretrained, num_classes, kwargs))
        if arch == "small_resnet":
            if "dynamic_img_size" in kwargs:
                raise TypeError("__init__() got an unexpected keyword argument 'dynamic_img_size'")
            return SmallResNet()
        if arch != "tiny_vit_64":
            raise RuntimeError(f"Unknown model ({arch})")
        model = TinyViT(native_grid=4)
        model.pretrained_cfg = {"input_size": (3, 64, 64), "mean": (0.5,) * 3, "std": (0.25,) * 3}
        return model

    return types.SimpleNamespace(create_model=create_model)


class SmallResNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.layer1 = nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.layer2 = nn.Conv2d(16, 32, 3, stride=2, padding=1)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(32, 10)

    def forward(self, x):
        x = torch.relu(self.layer2(torch.relu(self.layer1(torch.relu(self.conv1(x))))))
        return self.fc(self.avgpool(x).flatten(1))


@pytest.fixture(autouse=True)
def real_torchvision_first():
    """The adapters import torchvision before timm: done here, so that it cannot replace the
    stand-ins below on its first import."""
    import_torchvision()


@pytest.fixture
def fake_timm(monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", _fake_timm())
    CALLS.clear()


@pytest.fixture
def fake_torchvision(monkeypatch):
    models = types.SimpleNamespace(get_model=lambda arch, weights: SmallResNet())
    monkeypatch.setitem(sys.modules, "torchvision.models", models)


def test_timm_vit_layers_from_hooks(fake_timm):
    enc = build("timm:tiny_vit_64", model_kwargs={"init_values": 1e-5}, random_init=True)
    assert CALLS == [("tiny_vit_64", False, 0, {"dynamic_img_size": True, "init_values": 1e-5})]
    assert enc.layers == ("block1", "block2", "block3", "block4") and enc.dim == 192
    assert enc.grid_size("block4", 64) == 4
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        emb, grids, pooled = enc.forward_features(x, ["block2"])
        ref_emb, ref_grids, ref_pooled = enc.model.forward_layers(x, ["block2"])
    assert torch.equal(emb, ref_emb) and torch.equal(grids["block2"], ref_grids["block2"])
    assert torch.equal(pooled["block2"], ref_pooled["block2"])
    assert torch.allclose(enc.preprocess.mean.flatten(), torch.full((3,), 127.5))


def test_timm_checkpoint_under_a_prefix_with_a_head(fake_timm, tmp_path):
    trained = TinyViT(seed=7, native_grid=4)
    state = {f"visual.trunk.{k}": v for k, v in trained.state_dict().items()}
    state["visual.trunk.head.weight"] = torch.zeros(2, 192)  # a classifier the encoder drops
    state["text.proj"] = torch.zeros(3)
    save_file(state, str(tmp_path / "conch.safetensors"))
    enc = build("timm:tiny_vit_64", weights=tmp_path / "conch.safetensors")
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(enc.model(x), trained.eval()(x))


def test_timm_cnn_without_dynamic_img_size(fake_timm):
    enc = build("timm:small_resnet", random_init=True)
    assert CALLS[-1] == ("small_resnet", False, 0, {})
    assert enc.layers == ("conv1", "layer1", "layer2")
    with pytest.raises(ConfigError, match="unexpected keyword argument 'dynamic_img_size'"):
        build("timm:small_resnet", model_kwargs={"dynamic_img_size": True}, random_init=True)


def test_timm_bad_name_and_bad_weights(fake_timm, tmp_path):
    with pytest.raises(ConfigError, match="timm:nope: Unknown model"):
        build("timm:nope", random_init=True)
    save_file({"blocks.0.fc1.weight": torch.zeros(1)}, str(tmp_path / "w.safetensors"))
    with pytest.raises(FileFormatError, match="does not fit encoder timm:tiny_vit_64: missing"):
        build("timm:tiny_vit_64", weights=tmp_path / "w.safetensors")


def test_torchvision_cnn_stages(fake_torchvision):
    enc = build("torchvision:small_resnet", random_init=True)
    assert isinstance(enc.model.fc, nn.Identity) and enc.dim == 32
    assert enc.layer_strides == {"conv1": 2, "layer1": 4, "layer2": 8}
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        emb, grids, pooled = enc.forward_features(x, ["layer2"])
    assert grids["layer2"].shape == (2, 8, 8, 32)
    assert torch.allclose(pooled["layer2"], grids["layer2"].mean(dim=(1, 2)))
    assert torch.allclose(emb, enc.model(x))


def test_presets_need_weights_and_pass_normalisation(fake_timm, monkeypatch, tmp_path):
    from lrmil.encoders import registry

    with pytest.raises(ConfigError, match="encoder uni has no weights file"):
        build("uni")
    monkeypatch.setitem(
        registry.PRESETS,
        "uni",
        ("tiny_vit_64", {"init_values": 1e-5, "mean": (0.0,) * 3, "std": (1.0,) * 3}),
    )
    save_file(TinyViT(native_grid=4).state_dict(), str(tmp_path / "uni.safetensors"))
    enc = build("uni", weights=tmp_path / "uni.safetensors")
    assert CALLS[-1] == ("tiny_vit_64", False, 0, {"dynamic_img_size": True, "init_values": 1e-5})
    assert enc.name == "uni" and torch.equal(enc.preprocess.std.flatten(), torch.full((3,), 255.0))


def test_install_hint_names_the_package_not_the_module(monkeypatch):
    import sys

    from lrmil.encoders.external import _import
    from lrmil.errors import EnvironmentMissingError

    monkeypatch.setitem(sys.modules, "torchvision.models", None)  # the import fails
    with pytest.raises(EnvironmentMissingError) as info:
        _import("torchvision.models", "torchvision:resnet18")
    assert "needs the 'torchvision' package" in str(info.value)
    assert "pip install torchvision," in str(info.value)
