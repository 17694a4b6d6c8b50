"""The encoder registry: built-ins by name, plus `timm:<model>` and `torchvision:<model>`.

Layers of the built-ins (G = grid side at patch size 64 / 256; all divisible by r = 4):

| encoder          | dim | layer  | C_l | stride | G@64 | G@256 |
|------------------|-----|--------|-----|--------|------|-------|
| `lrmil-cnn`      | 256 | stem   | 32  | 2      | 32   | 128   |
|                  |     | stage1 | 32  | 4      | 16   | 64    |
|                  |     | stage2 | 64  | 8      | 8    | 32    |
|                  |     | stage3 | 128 | 16     | 4    | 16    |
| `lrmil-vit-tiny` | 192 | block1..block4 | 192 | 16 | 4 | 16    |

Foundation models from a local checkpoint (nothing is ever downloaded; timm must be installed):

    build("uni", weights="UNI/pytorch_model.bin")        # UNI: timm ViT-L/16, init_values 1e-5
    build("conch-vit-b16", weights="CONCH/pytorch_model.bin")  # CONCH's vision tower (ViT-B/16,
                                     # 448 px): the keys under `visual.trunk.` are found and used
    lrmil embed TILED --encoder uni --weights UNI/pytorch_model.bin --out FEAT

Any other timm / torchvision model: `timm:<model>` with `model_kwargs` (CLI `--encoder-arg
KEY=VALUE`) passed to its constructor, plus `mean` / `std` for the normalisation. timm ViTs are
built with `dynamic_img_size=True` (position embeddings interpolated for any patch size).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lrmil.encoders.base import IMAGENET_MEAN, IMAGENET_STD, Encoder, Preprocess
from lrmil.encoders.cnn import CompactCNN
from lrmil.encoders.vit import TinyViT
from lrmil.encoders.weights import load_weights
from lrmil.errors import ConfigError

Builder = Callable[[int], nn.Module]

# builder(seed) -> a module with `dim`, `layer_dims`, `layer_strides`, `default_layers`,
# forward(x) -> (B, dim) and forward_layers(x, layers).
BUILTINS: dict[str, Builder] = {"lrmil-cnn": CompactCNN, "lrmil-vit-tiny": TinyViT}
PREFIXES = ("timm:", "torchvision:")
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
# Foundation models: a timm architecture, its arguments and normalisation; weights required.
PRESETS: dict[str, tuple[str, dict[str, Any]]] = {
    "uni": (
        "vit_large_patch16_224",
        {"init_values": 1e-5, "mean": IMAGENET_MEAN, "std": IMAGENET_STD},
    ),
    "conch-vit-b16": (
        "vit_base_patch16_224",
        {"img_size": 448, "mean": CLIP_MEAN, "std": CLIP_STD},
    ),
}


def register(name: str, builder: Builder) -> None:
    """Add a built-in encoder (see BUILTINS for what `builder(seed)` must return)."""
    BUILTINS[name] = builder


def known_encoders() -> list[str]:
    return [*BUILTINS, *PRESETS, *(f"{p}<model>" for p in PREFIXES)]


def _builtin(name: str, weights: str | Path | None, seed: int) -> Encoder:
    model = BUILTINS[name](seed)
    if weights is not None:
        load_weights(model, weights, name)
    return Encoder(
        name=name,
        model=model.eval(),
        preprocess=Preprocess(IMAGENET_MEAN, IMAGENET_STD),
        dim=model.dim,
        precision=torch.bfloat16,
        layer_dims=dict(model.layer_dims),
        layer_strides=dict(model.layer_strides),
        default_layers=tuple(model.default_layers),
        features_fn=lambda m, x, layers: m.forward_layers(x, layers),
    )


def build(
    name: str,
    weights: str | Path | None = None,
    seed: int = 0,
    model_kwargs: dict[str, Any] | None = None,
) -> Encoder:
    """The encoder `name`, in eval mode on the CPU. Built-ins are initialised deterministically
    from `seed`; `weights` (safetensors or a torch state dict) replaces the parameters."""
    kwargs = dict(model_kwargs or {})
    if name in BUILTINS:
        if kwargs:
            raise ConfigError(f"encoder {name} takes no model arguments, got {', '.join(kwargs)}")
        return _builtin(name, weights, seed)
    if name in PRESETS:
        if weights is None:
            raise ConfigError(
                f"encoder {name} needs its weights file (--weights): nothing is downloaded"
            )
        from lrmil.encoders.external import build_timm

        arch, preset = PRESETS[name]
        return build_timm(name, arch, str(weights), {**preset, **kwargs})
    prefix, _, arch = name.partition(":")
    if arch and prefix == "timm":
        from lrmil.encoders.external import build_timm

        return build_timm(name, arch, None if weights is None else str(weights), kwargs)
    if arch and prefix == "torchvision":
        from lrmil.encoders.external import build_torchvision

        return build_torchvision(name, arch, None if weights is None else str(weights), kwargs)
    raise ConfigError(f"unknown encoder {name!r}; known encoders: {', '.join(known_encoders())}")
