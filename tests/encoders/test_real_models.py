"""The real timm, torchvision and CONCH code (lrmil[models], conch-fork): a ResNet-50 and a
ViT-B/16 from a weights file through `lrmil embed` and stage 1 in encoder mode; `uni` built as
UNI's own code builds it; `conch-vit-b16` loading CONCH's checkpoint layout and giving CONCH's
trunk outputs."""

import importlib
import importlib.metadata
import importlib.util
import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from lrmil.cli.main import app
from safetensors.torch import save_file
from typer.testing import CliRunner

from lrmil.data import read_features
from lrmil.encoders import build
from lrmil.encoders.external import import_torchvision, timm_model
from lrmil.encoders.registry import PRESETS
from lrmil.tiling import read_coords
from lrmil.wsi import open_slide


def _first_patches(tiled: Path, name: str, mag: str, n: int) -> torch.Tensor:
    """The first `n` patches of a slide at `mag`, read as lrmil embed reads them."""
    ts = read_coords(tiled / "coords" / f"{name}.h5")
    coords, size0 = ((ts.coords, ts.lr_patch_size_level0) if mag == "lr" else
                     (ts.hr_coords[np.nonzero(ts.hr_valid)], ts.hr_patch_size_level0))
    with open_slide(ts.slide_path) as slide:
        return torch.from_numpy(np.stack([
            np.ascontiguousarray(slide.read_region(int(x), int(y), size0, ts.patch_size))
            for x, y in coords[:n]]))


def test_torchvision_resnet50_from_a_checkpoint_through_embed(two_slides_tiled, tmp_path):
    tv = import_torchvision()
    torch.manual_seed(0)
    checkpoint = tv.models.resnet50().state_dict()  # torchvision's layout, its fc head included
    save_file(checkpoint, str(tmp_path / "resnet50.safetensors"))
    out = tmp_path / "feat"
    result = CliRunner().invoke(app, [
        "embed", str(two_slides_tiled), "--out", str(out), "--encoder", "torchvision:resnet50",
        "--weights", str(tmp_path / "resnet50.safetensors"), "--mag", "both",
        "--layers", "layer2", "--layers", "layer3", "--batch-size", "16"])
    assert result.exit_code == 0, result.output
    hr = read_features(out / "hr" / "slide_0000.h5", dim=2048)
    assert hr.attrs["encoder"] == "torchvision:resnet50" and len(hr) == 34
    assert {k: v.shape[1] for k, v in hr.layers.items()} == {"layer2": 512, "layer3": 1024}
    recorded = json.loads(hr.attrs["lrmil_versions"])
    assert recorded["torchvision"] == importlib.metadata.version("torchvision")
    reference = tv.models.resnet50()
    reference.load_state_dict(checkpoint)
    reference.fc = torch.nn.Identity()
    encoder = build("torchvision:resnet50", weights=tmp_path / "resnet50.safetensors")
    patches = _first_patches(two_slides_tiled, "slide_0000", "hr", 4)
    with torch.no_grad():
        expected = reference.eval()(encoder.preprocess(patches))
    np.testing.assert_allclose(hr.features[:4], expected.numpy(), rtol=1e-4, atol=1e-4)


def test_uni_preset_builds_unis_model():
    # UNI's README and uni/get_encoder/get_encoder.py (MahmoodLab/UNI), as they are.
    uni_kwargs = {"model_name": "vit_large_patch16_224", "img_size": 224, "patch_size": 16,
                  "init_values": 1e-5, "num_classes": 0, "dynamic_img_size": True}
    import_torchvision()
    timm = importlib.import_module("timm")
    arch, preset = PRESETS["uni"]
    with torch.device("meta"):
        theirs = timm.create_model(**uni_kwargs)
        ours = timm_model(arch, {k: v for k, v in preset.items() if k not in ("mean", "std")})
    assert repr(ours) == repr(theirs)
    assert {k: v.shape for k, v in ours.state_dict().items()} == {
        k: v.shape for k, v in theirs.state_dict().items()}
    assert ours.dynamic_img_size and ours.patch_embed.img_size == (224, 224)
    assert ours.blocks[0].ls1.gamma.shape == (1024,)  # init_values: LayerScale, as UNI's keys
    assert preset["mean"] == (0.485, 0.456, 0.406) and preset["std"] == (0.229, 0.224, 0.225)


@pytest.fixture
def conch(monkeypatch):
    """CONCH's `open_clip_custom.coca_model` and its `conch_ViT-B-16.json`. The package's
    __init__ also imports CONCH's tokenizer (transformers) and hub client, which the vision
    tower does not use, so the package is entered without it."""
    import_torchvision()
    spec = importlib.util.find_spec("conch")
    if spec is None:
        pytest.skip("conch-fork is not installed (pip install --no-deps conch-fork==0.1.0)")
    folder = Path(next(iter(spec.submodule_search_locations))) / "open_clip_custom"
    package = types.ModuleType("conch.open_clip_custom")
    package.__path__ = [str(folder)]
    monkeypatch.setitem(sys.modules, "conch.open_clip_custom", package)
    for name in ("coca_model", "vision_tower", "transformer", "utils", "constants"):
        monkeypatch.delitem(sys.modules, f"conch.open_clip_custom.{name}", raising=False)
    coca_model = importlib.import_module("conch.open_clip_custom.coca_model")
    constants = importlib.import_module("conch.open_clip_custom.constants")
    config = json.loads((folder / "model_configs" / "conch_ViT-B-16.json").read_text())
    return coca_model, constants, config


def test_conch_preset_is_conchs_vision_trunk(conch, tmp_path):
    coca_model, constants, config = conch
    torch.manual_seed(0)
    visual = coca_model._build_vision_tower(  # what CoCa(**config) builds as `visual`
        config["embed_dim"], config["vision_cfg"], config["embed_dim_caption"]).eval()
    with torch.no_grad():  # weights unlike any initialisation, LayerNorms and biases included
        for p in visual.parameters():
            p.add_(0.05 * torch.randn_like(p))
    # CONCH's pytorch_model.bin layout: the CoCa state dict (visual.trunk.*, visual.attn_pool_*,
    # visual.ln_*, text.*, ...); the trunk's keys are found under their prefix.
    torch.save({f"visual.{k}": v for k, v in visual.state_dict().items()},
               tmp_path / "pytorch_model.bin")
    encoder = build("conch-vit-b16", weights=tmp_path / "pytorch_model.bin")
    assert encoder.dim == 768 and encoder.layers[-1] == "block12"
    assert torch.allclose(encoder.preprocess.mean.flatten() / 255,
                          torch.tensor(constants.OPENAI_DATASET_MEAN))
    assert torch.allclose(encoder.preprocess.std.flatten() / 255,
                          torch.tensor(constants.OPENAI_DATASET_STD))
    block6 = {}
    visual.trunk.blocks[5].register_forward_hook(lambda _m, _i, out: block6.update(out=out))
    for side, n in ((448, 1), (128, 2)):  # CONCH's own size, and a grid it interpolates
        x = torch.randn(n, 3, side, side, generator=torch.Generator().manual_seed(side))
        with torch.no_grad():
            tokens = visual.trunk(x)  # CONCH's trunk: forward_features, (B, 1 + N, 768)
            emb, grids, pooled = encoder.forward_features(x, ["block6"])
        g = side // 16
        assert (emb - tokens[:, 0]).abs().max() <= 1e-5
        assert (pooled["block6"] - block6["out"][:, 0]).abs().max() <= 1e-5
        assert (grids["block6"] - block6["out"][:, 1:].reshape(n, g, g, 768)).abs().max() <= 1e-5
        assert tokens[:, 0].std() > 0.1  # outputs of a real size, not near-zero


@pytest.mark.slow
@pytest.mark.parametrize("name, layers", [("timm:vit_base_patch16_224", ["block6", "block12"]),
                                          ("torchvision:resnet50", ["layer2", "layer3"])])
def test_real_encoder_through_embed_and_stage1_encoder_mode(stage1_tiled, tmp_path, name,
                                                            layers):
    from lrmil.data.store import FeatureStore
    from lrmil.distill import load_config, load_student, run
    from lrmil.distill.layout import RunLayout
    from lrmil.distill.stage1 import stage1_features
    from lrmil.embed import embed_slides

    weights = tmp_path / "weights.safetensors"
    save_file(build(name, random_init=True).model.state_dict(), str(weights))
    feats = tmp_path / "features"
    embed_slides(stage1_tiled / "tiled", name, feats, weights=weights, layers=layers, batch_size=32)
    cfg = load_config(
        overrides=["folds=2", "val_fraction=0.3", "teacher.epochs=2", "student.epochs=2",
                   "baseline.epochs=2", "teacher.min_epochs=1", "student.min_epochs=1",
                   "baseline.min_epochs=1", "stage1.epochs=1", "stage1.read_workers=0",
                   "stage1.batch_patches=8", f"stage1.encoder_weights={weights}",
                   f"stage1.layers=[{', '.join(layers)}]"],
        features=str(feats), labels=str(stage1_tiled / "labels.csv"), out=str(tmp_path / "run"))
    assert run(cfg)["models"] == ["teacher", "baseline", "student"]
    # The fine-tuned encoder load_student gives reproduces the stage-1 features, which moved.
    encoder, _, config = load_student(tmp_path / "run", fold=1)
    assert config["encoder"]["lr"] == name
    with torch.no_grad():
        emb = encoder.encode(_first_patches(stage1_tiled / "tiled", "slide_0001", "lr", 2))
    stage1 = FeatureStore().read(stage1_features(RunLayout(tmp_path / "run").fold(1),
                                                 "slide_0001"))[:2]
    np.testing.assert_allclose(emb.numpy(), stage1, rtol=1e-3, atol=1e-3)
    base = read_features(feats / "lr" / "slide_0001.h5").features[:2]
    assert not np.allclose(stage1, base, atol=1e-3)
