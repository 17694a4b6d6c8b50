"""The encoder registry: built-ins by name, plus `timm:<model>` and `torchvision:<model>`.

Layers of the built-ins (G = grid side at patch size 64 / 256; all divisible by r = 4):

| encoder          | dim | layer  | C_l | stride | G@64 | G@256 |
|------------------|-----|--------|-----|--------|------|-------|
| `lrmil-cnn`      | 256 | stem   | 32  | 2      | 32   | 128   |
|                  |     | stage1 | 32  | 4      | 16   | 64    |
|                  |     | stage2 | 64  | 8      | 8    | 32    |
|                  |     | stage3 | 128 | 16     | 4    | 16    |
| `lrmil-vit-tiny` | 192 | block1..block4 | 192 | 16 | 4 | 16    |

Foundation models from a local checkpoint (nothing is ever downloaded; needs `lrmil[models]`):

    build("uni", weights="UNI/pytorch_model.bin")        # UNI's timm ViT-L/16 (its README's
                                                         # create_model arguments)
    build("conch-vit-b16", weights="CONCH/pytorch_model.bin")  # CONCH's vision trunk (ViT-B/16,
                                     # 448 px, CLS after the last norm, 768-d): the keys under
                                     # `visual.trunk.` of the whole CoCa checkpoint are found
    lrmil embed TILED --encoder uni --weights UNI/pytorch_model.bin --out FEAT

Any other timm / torchvision model: `timm:<model>` with `model_kwargs` (CLI `--encoder-arg
KEY=VALUE`) passed to its constructor, plus `mean` / `std` for the normalisation. timm ViTs are
built with `dynamic_img_size=True` (position embeddings interpolated for any patch size).
Everything but the built-ins needs a weights file, or `random_init` (CLI `--random-init`: the
architecture's own initialisation, seeded, for tests and smoke runs).
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
    # UNI's README / uni.get_encoder: img_size 224, patch 16, init_values 1e-5, num_classes 0,
    # dynamic_img_size True (build_timm adds the last two).
    "uni": (
        "vit_large_patch16_224",
        {"img_size": 224, "patch_size": 16, "init_values": 1e-5,
         "mean": IMAGENET_MEAN, "std": IMAGENET_STD},
    ),
    # CONCH's open_clip_custom (conch_ViT-B-16.json, coca_model._build_vision_tower): timm's
    # VisionTransformer with ViT-B/16 defaults at image_size 448, num_classes 0, dynamic_img_size.
    "conch-vit-b16": (
        "vit_base_patch16_224",
        {"img_size": 448, "patch_size": 16, "mean": CLIP_MEAN, "std": CLIP_STD},
    ),
}


def register(name: str, builder: Builder) -> None:
    """Add a built-in encoder (see BUILTINS for what `builder(seed)` must return)."""
    BUILTINS[name] = builder


def known_encoders() -> list[str]:
    return [*BUILTINS, *PRESETS, *(f"{p}<model>" for p in PREFIXES)]


def library_versions(name: str) -> dict[str, str]:
    """Versions of the packages whose code defines encoder `name` (none for the built-ins):
    recorded with the features, as an architecture's code may change between releases."""
    from importlib import metadata

    if name in BUILTINS:
        return {}
    packages = ("torchvision",) if name.startswith("torchvision:") else ("timm", "torchvision")
    found = {}
    for package in packages:
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            found[package] = "not installed"
    return found


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
    random_init: bool = False,
) -> Encoder:
    """The encoder `name`, in eval mode on the CPU. Built-ins are initialised deterministically
    from `seed`; `weights` (safetensors or a torch state dict) replaces the parameters. Other
    encoders need `weights`, or `random_init` (their own initialisation, seeded by `seed`)."""
    kwargs = dict(model_kwargs or {})
    if name in BUILTINS:
        if kwargs:
            raise ConfigError(f"encoder {name} takes no model arguments, got {', '.join(kwargs)}")
        if random_init:
            raise ConfigError(f"encoder {name} is initialised from --seed: --random-init is for "
                              "timm:, torchvision: and foundation-model encoders")
        return _builtin(name, weights, seed)
    prefix, _, arch = name.partition(":")
    if name in PRESETS:
        arch, preset = PRESETS[name]
        kwargs = {**preset, **kwargs}
    elif not (arch and prefix in ("timm", "torchvision")):
        raise ConfigError(
            f"unknown encoder {name!r}; known encoders: {', '.join(known_encoders())}")
    if weights is None and not random_init:
        raise ConfigError(
            f"encoder {name} has no weights file (lrmil embed --weights, distill "
            "stage1.encoder_weights): nothing is downloaded; --random-init uses a random "
            "initialisation (tests, smoke runs)")
    if weights is not None and random_init:
        raise ConfigError(f"encoder {name}: --weights and --random-init exclude each other")
    from lrmil.encoders.external import build_timm, build_torchvision

    builder = build_torchvision if prefix == "torchvision" else build_timm
    with torch.random.fork_rng(devices=[]):  # a seeded init that leaves the caller's RNG as it was
        torch.manual_seed(seed)
        return builder(name, arch, None if weights is None else str(weights), kwargs)
