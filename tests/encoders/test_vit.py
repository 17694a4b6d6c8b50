import pytest
import torch
from torch.nn import functional as F

from lrmil.encoders import build, interpolate_pos_embed
from lrmil.encoders.vit import TinyViT
from lrmil.errors import ConfigError


def test_other_input_size_equals_model_with_interpolated_pos_embed():
    native = build("lrmil-vit-tiny").model  # native grid 16 (256 px)
    small = TinyViT(native_grid=4)  # native grid 4 (64 px)
    state = dict(native.state_dict())
    state["pos_embed"] = interpolate_pos_embed(native.pos_embed.detach(), 1, 4)
    small.load_state_dict(state)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(native.eval()(x), small.eval()(x), atol=1e-6)


def test_interpolation_is_bicubic_and_keeps_cls():
    pos = torch.randn(1, 1 + 8 * 8, 6)
    out = interpolate_pos_embed(pos, 1, 4)
    assert out.shape == (1, 1 + 16, 6)
    assert torch.equal(out[:, 0], pos[:, 0])
    grid = pos[:, 1:].reshape(1, 8, 8, 6).permute(0, 3, 1, 2)
    expected = F.interpolate(grid, size=(4, 4), mode="bicubic", align_corners=False)
    assert torch.allclose(out[:, 1:], expected.permute(0, 2, 3, 1).reshape(1, 16, 6))
    assert interpolate_pos_embed(pos, 1, 8) is pos


def test_sliced_pos_embed_would_differ():
    # The authors' code slices the first G*G embeddings: that is not what the model does.
    native = build("lrmil-vit-tiny").model
    sliced = native.pos_embed[:, : 1 + 16]
    assert not torch.allclose(sliced, interpolate_pos_embed(native.pos_embed, 1, 4))


def test_patch_side_must_be_multiple_of_token():
    with pytest.raises(ConfigError, match="divisible by 16, got 72x72"):
        build("lrmil-vit-tiny").model(torch.zeros(1, 3, 72, 72))
