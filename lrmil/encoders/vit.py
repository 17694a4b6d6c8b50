"""`lrmil-vit-tiny`: a small ViT (16 px tokens, dim 192, 4 blocks, 3 heads) with a fixed-init
convolutional stem, and position-embedding interpolation for any input size.

Tokens come from the same stain/blob/edge stem as `lrmil-cnn` (stride 2) and an 8x8 patchify
conv, so the 16 px token grid starts from non-linear H&E features. Blocks are pre-norm with
layer scale 0.1, so at initialisation CLS is close to a pooled summary of the stem features.
The native grid is 16 x 16 (256 px); other sizes (multiples of 16) interpolate the position
embeddings bicubically (the authors' code slices them instead, which is wrong).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from lrmil.encoders import filters
from lrmil.encoders.base import LayerFeatures
from lrmil.errors import ConfigError

TOKEN = 16
STEM_KERNEL = 7
STEM_SCALES = (0.7, 1.2, 2.0)


def sincos_pos_embed(dim: int, grid: int) -> torch.Tensor:
    """(grid*grid, dim) fixed 2-D sine-cosine embedding (half the channels per axis)."""
    quarter = dim // 4
    omega = 1.0 / 10000 ** (torch.arange(quarter, dtype=torch.float64) / quarter)
    y, x = torch.meshgrid(
        torch.arange(grid, dtype=torch.float64),
        torch.arange(grid, dtype=torch.float64),
        indexing="ij",
    )
    parts = []
    for axis in (x.flatten(), y.flatten()):
        angle = axis[:, None] * omega[None]
        parts += [angle.sin(), angle.cos()]
    return torch.cat(parts, dim=1).float()


def interpolate_pos_embed(pos_embed: torch.Tensor, n_prefix: int, grid: int) -> torch.Tensor:
    """(1, n_prefix + g*g, C) -> (1, n_prefix + grid*grid, C): the g x g part resized bicubically
    (no antialiasing, so the op exports to ONNX Resize), prefix tokens kept as they are."""
    prefix, spatial = pos_embed[:, :n_prefix], pos_embed[:, n_prefix:]
    side = math.isqrt(spatial.shape[1])
    if side == grid:
        return pos_embed
    spatial = spatial.reshape(1, side, side, -1).permute(0, 3, 1, 2)
    spatial = F.interpolate(spatial, size=(grid, grid), mode="bicubic", align_corners=False)
    return torch.cat([prefix, spatial.permute(0, 2, 3, 1).reshape(1, grid * grid, -1)], dim=1)


def _patchify_init(shape: torch.Size, generator: torch.Generator) -> torch.Tensor:
    """The first C_stem tokens channels average each stem channel over the token (so pooled
    tokens keep the stem's colour / blob / edge statistics, as in lrmil-cnn); the others are
    random orthogonal directions."""
    dim, c_stem, k, _ = shape
    weight = filters.orthogonal(tuple(shape), 1.0, generator)
    weight[:c_stem] = 0
    weight[torch.arange(c_stem), torch.arange(c_stem)] = 1.0 / k  # unit-norm box filter
    return weight


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_ratio: int = 4, layer_scale: float = 0.1) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, mlp_ratio * dim)
        self.fc2 = nn.Linear(mlp_ratio * dim, dim)
        self.gamma1 = nn.Parameter(torch.full((dim,), layer_scale))
        self.gamma2 = nn.Parameter(torch.full((dim,), layer_scale))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.gamma1 * self.attn(self.norm1(x))
        return x + self.gamma2 * self.fc2(F.gelu(self.fc1(self.norm2(x))))


class TinyViT(nn.Module):
    def __init__(
        self, seed: int = 0, dim: int = 192, depth: int = 4, heads: int = 3, native_grid: int = 16
    ) -> None:
        super().__init__()
        bank = filters.stem_bank(STEM_KERNEL, STEM_SCALES)
        self.stem = nn.Conv2d(3, bank.shape[0], STEM_KERNEL, stride=2, padding=STEM_KERNEL // 2)
        self.patchify = nn.Conv2d(bank.shape[0], dim, TOKEN // 2, stride=TOKEN // 2)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(
            torch.cat([torch.zeros(1, dim), 0.1 * sincos_pos_embed(dim, native_grid)])[None]
        )
        self.blocks = nn.ModuleList(Block(dim, heads) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.dim = dim
        self.layer_names = tuple(f"block{i + 1}" for i in range(depth))
        self.layer_dims = dict.fromkeys(self.layer_names, dim)
        self.layer_strides = dict.fromkeys(self.layer_names, TOKEN)
        self.default_layers = (self.layer_names[depth // 2 - 1], self.layer_names[-1])
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            self.stem.weight.copy_(bank)
            self.stem.bias.zero_()
            self.patchify.weight.copy_(_patchify_init(self.patchify.weight.shape, generator))
            self.patchify.bias.zero_()
            for block in self.blocks:
                for linear in (block.attn.qkv, block.attn.proj, block.fc1, block.fc2):
                    linear.weight.copy_(
                        filters.orthogonal(tuple(linear.weight.shape), 1.0, generator)
                    )
                    linear.bias.zero_()

    def _tokens(self, x: torch.Tensor) -> tuple[torch.Tensor, int]:
        h, w = x.shape[-2:]
        if h != w or h % TOKEN:
            raise ConfigError(
                f"lrmil-vit-tiny needs square patches with a side divisible by {TOKEN}, got {h}x{w}"
            )
        t = self.patchify(F.relu(self.stem(x)))
        grid = t.shape[-1]
        t = torch.cat(
            [self.cls_token.expand(t.shape[0], -1, -1), t.flatten(2).transpose(1, 2)], dim=1
        )
        return t + interpolate_pos_embed(self.pos_embed, 1, grid), grid

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t, _ = self._tokens(x)
        for block in self.blocks:
            t = block(t)
        return self.norm(t[:, 0])

    def forward_layers(self, x: torch.Tensor, layers: Sequence[str]) -> LayerFeatures:
        t, grid = self._tokens(x)
        grids, pooled = {}, {}
        for name, block in zip(self.layer_names, self.blocks, strict=True):
            t = block(t)
            if name in layers:
                grids[name] = t[:, 1:].reshape(t.shape[0], grid, grid, -1)
                pooled[name] = t[:, 0]
        return self.norm(t[:, 0]), grids, pooled
