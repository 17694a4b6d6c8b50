"""`lrmil-cnn`: a compact CNN whose random initialisation already gives useful H&E features.

stem (stride 2, fixed-init stain/blob/edge bank) -> stage1 (4) -> stage2 (8) -> stage3 (16).
Embedding: the spatial means of all four maps concatenated (multi-scale pooling: colour, nuclear
size and density, texture), dim = 32 + 32 + 64 + 128 = 256. About 0.2 GMAC per 256 px patch.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from lrmil.encoders import filters
from lrmil.encoders.base import LayerFeatures

STEM_SCALES = (0.7, 1.2, 2.0)
STEM_KERNEL = 7
WIDTHS = (32, 64, 128)


class Stage(nn.Module):
    """Strided 3x3 down-sampling, then a residual 3x3 conv."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.down = nn.Conv2d(c_in, c_out, 3, stride=2, padding=1)
        self.conv = nn.Conv2d(c_out, c_out, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.down(x))
        return x + F.relu(self.conv(x))

    def init_(self, generator: torch.Generator) -> None:
        for conv in (self.down, self.conv):
            # Kaiming gain for ReLU, but orthogonal: no direction is amplified or lost.
            conv.weight.copy_(filters.orthogonal(tuple(conv.weight.shape), 2**0.5, generator))
            conv.bias.zero_()
        self.conv.weight.mul_(0.5)  # the residual branch starts as a perturbation


class CompactCNN(nn.Module):
    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        bank = filters.stem_bank(STEM_KERNEL, STEM_SCALES)
        self.stem = nn.Conv2d(3, bank.shape[0], STEM_KERNEL, stride=2, padding=STEM_KERNEL // 2)
        widths = (bank.shape[0], *WIDTHS)
        self.stages = nn.ModuleList(
            Stage(a, b) for a, b in zip(widths[:-1], widths[1:], strict=True)
        )
        self.layer_names = ("stem", *(f"stage{i + 1}" for i in range(len(WIDTHS))))
        self.layer_dims = dict(zip(self.layer_names, widths, strict=True))
        self.layer_strides = {name: 2 ** (i + 1) for i, name in enumerate(self.layer_names)}
        self.default_layers = ("stage2", "stage3")
        self.dim = sum(widths)
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            self.stem.weight.copy_(bank)
            self.stem.bias.zero_()
            for stage in self.stages:
                stage.init_(generator)

    def _maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        maps = [F.relu(self.stem(x))]
        for stage in self.stages:
            maps.append(stage(maps[-1]))
        return maps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([m.mean(dim=(2, 3)) for m in self._maps(x)], dim=1)

    def forward_layers(self, x: torch.Tensor, layers: Sequence[str]) -> LayerFeatures:
        maps = dict(zip(self.layer_names, self._maps(x), strict=True))
        pooled_all = {name: m.mean(dim=(2, 3)) for name, m in maps.items()}
        embedding = torch.cat(list(pooled_all.values()), dim=1)
        grids = {name: maps[name].permute(0, 2, 3, 1) for name in layers}
        return embedding, grids, {name: pooled_all[name] for name in layers}
