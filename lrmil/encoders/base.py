"""The encoder contract every registry entry satisfies."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from lrmil.errors import ConfigError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# (embedding (B, dim), grids {layer: (B, G, G, C)}, pooled {layer: (B, C)})
LayerFeatures = tuple[torch.Tensor, dict[str, torch.Tensor], dict[str, torch.Tensor]]
FeaturesFn = Callable[[nn.Module, torch.Tensor, Sequence[str]], LayerFeatures]


class Preprocess(nn.Module):
    """uint8 (B, H, W, 3) patches -> normalised float (B, 3, H, W).

    A module of plain tensor ops, so an ONNX export can fold it into the graph and take uint8
    input directly."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).mul(255).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).mul(255).view(1, 3, 1, 1), persistent=False)

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        x = patches.permute(0, 3, 1, 2).to(self.mean.dtype)
        return (x - self.mean) / self.std


@dataclass
class Encoder:
    """A patch encoder. `model(preprocess(patches))` gives the (B, dim) embedding.

    `layers` are the names `forward_features` accepts, in depth order, with `layer_dims` their
    channel counts C_l and `layer_strides` the pixels per grid cell (G = patch_size / stride).
    `precision` is the autocast dtype to use on a GPU."""

    name: str
    model: nn.Module
    preprocess: Preprocess
    dim: int
    precision: torch.dtype
    layer_dims: dict[str, int]
    layer_strides: dict[str, int]
    default_layers: tuple[str, ...]
    features_fn: FeaturesFn = field(repr=False)

    @property
    def layers(self) -> tuple[str, ...]:
        return tuple(self.layer_dims)

    def check_layers(self, layers: Sequence[str]) -> None:
        unknown = [layer for layer in layers if layer not in self.layer_dims]
        if unknown:
            raise ConfigError(
                f"encoder {self.name} has no layer {', '.join(unknown)}; "
                f"known layers: {', '.join(self.layers)}"
            )

    def grid_size(self, layer: str, patch_size: int) -> int:
        """Side G of the layer's spatial grid for a square patch of `patch_size` pixels."""
        self.check_layers([layer])
        return patch_size // self.layer_strides[layer]

    def forward_features(self, x: torch.Tensor, layers: Sequence[str]) -> LayerFeatures:
        """Normalised float (B, 3, H, W) -> (embedding (B, dim), {layer: grid (B, G, G, C_l)},
        {layer: pooled (B, C_l)}): the grids for the student's block loss, the pooled layer
        embeddings as the teacher's t^l (ViT: CLS after the block; CNN: mean of the map)."""
        self.check_layers(layers)
        return self.features_fn(self.model, x, list(layers))

    @torch.no_grad()
    def encode(self, patches: torch.Tensor) -> torch.Tensor:
        """uint8 (B, H, W, 3) -> (B, dim), in the model's current mode."""
        return self.model(self.preprocess(patches))

    def to(self, device: torch.device | str) -> Encoder:
        self.model.to(device)
        self.preprocess.to(device)
        return self

    def eval(self) -> Encoder:
        self.model.eval()
        return self
