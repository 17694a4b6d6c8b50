import sys

import pytest
import torch

from lrmil.encoders import build, known_encoders
from lrmil.errors import ConfigError, EnvironmentMissingError

BUILTINS = ["lrmil-cnn", "lrmil-vit-tiny"]


def test_unknown_encoder_lists_known_names():
    with pytest.raises(ConfigError, match="unknown encoder 'resnet9000'") as err:
        build("resnet9000")
    for name in known_encoders():
        assert name in str(err.value)
    assert "lrmil-cnn" in str(err.value)


@pytest.mark.parametrize("name", BUILTINS)
def test_builtin_is_deterministic_from_seed(name):
    x = torch.randint(0, 256, (2, 64, 64, 3), dtype=torch.uint8)
    a, b, c = build(name, seed=0), build(name, seed=0), build(name, seed=1)
    assert torch.equal(a.encode(x), b.encode(x))
    assert not torch.allclose(a.encode(x), c.encode(x))


@pytest.mark.parametrize("name", BUILTINS)
@pytest.mark.parametrize("patch", [64, 256])
def test_forward_features_contract(name, patch):
    enc = build(name)
    x = enc.preprocess(torch.randint(0, 256, (2, patch, patch, 3), dtype=torch.uint8))
    with torch.no_grad():
        emb, grids, pooled = enc.forward_features(x, enc.layers)
        direct = enc.model(x)
    assert emb.shape == (2, enc.dim) and torch.allclose(emb, direct, atol=1e-6)
    for layer in enc.layers:
        g = enc.grid_size(layer, patch)
        assert g % 4 == 0, f"{layer}: G={g} not divisible by r=4"
        assert grids[layer].shape == (2, g, g, enc.layer_dims[layer])
        assert pooled[layer].shape == (2, enc.layer_dims[layer])
    assert set(enc.default_layers) <= set(enc.layers)


def test_cnn_pooled_is_mean_of_grid_and_vit_pooled_is_cls():
    cnn = build("lrmil-cnn")
    x = cnn.preprocess(torch.randint(0, 256, (2, 64, 64, 3), dtype=torch.uint8))
    with torch.no_grad():
        _, grids, pooled = cnn.forward_features(x, ["stage3"])
    assert torch.allclose(grids["stage3"].mean(dim=(1, 2)), pooled["stage3"], atol=1e-6)
    vit = build("lrmil-vit-tiny")
    with torch.no_grad():
        emb, _, pooled = vit.forward_features(x, ["block4"])
    assert torch.allclose(vit.model.norm(pooled["block4"]), emb, atol=1e-6)


def test_unknown_layer_is_named():
    enc = build("lrmil-cnn")
    with pytest.raises(ConfigError, match="no layer block9.*stage3"):
        enc.forward_features(torch.zeros(1, 3, 64, 64), ["block9"])


def test_preprocess_normalises_uint8_channels_last():
    enc = build("lrmil-cnn")
    x = torch.full((1, 4, 4, 3), 255, dtype=torch.uint8)
    out = enc.preprocess(x)
    assert out.shape == (1, 3, 4, 4) and out.dtype == torch.float32
    expected = (1 - torch.tensor([0.485, 0.456, 0.406])) / torch.tensor([0.229, 0.224, 0.225])
    assert torch.allclose(out[0, :, 0, 0], expected, atol=1e-5)


def test_model_kwargs_rejected_for_builtins():
    with pytest.raises(ConfigError, match="takes no model arguments"):
        build("lrmil-cnn", model_kwargs={"depth": 3})


@pytest.mark.parametrize("name", ["timm:vit_small_patch16_224", "torchvision:resnet18"])
def test_missing_optional_package_is_a_clear_error(name, monkeypatch):
    module = name.split(":")[0]
    monkeypatch.setitem(sys.modules, module, None)  # `import module` raises ImportError
    monkeypatch.setitem(sys.modules, f"{module}.models", None)
    with pytest.raises(EnvironmentMissingError, match=rf"needs the '{module}' package.*"
                       r"pip install \S+, matching your torch; or lrmil\[models\]"):
        build(name, random_init=True)
