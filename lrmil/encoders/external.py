"""`timm:<model>` and `torchvision:<model>` encoders: never pretrained from a hub, weights only
from a local file.

Layer features come from forward hooks, so any architecture works: a ViT's blocks (tokens ->
grid of patch tokens, pooled = CLS) or a CNN's stages (map -> grid, pooled = spatial mean). The
layers, their widths and strides are found by one dry run at build time.
"""

from __future__ import annotations

import importlib
import itertools
import sys
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from lrmil.encoders.base import IMAGENET_MEAN, IMAGENET_STD, Encoder, LayerFeatures, Preprocess
from lrmil.encoders.weights import load_weights
from lrmil.errors import ConfigError, EnvironmentMissingError

# Classifier heads the encoder drops (num_classes=0 / Identity): checkpoints may still hold them.
HEAD_PREFIXES = ("head.", "fc.", "classifier.", "heads.")


# PyPI's Linux torchvision wheels are CUDA builds: beside a CPU torch their C++ ops (nms,
# roi_align, ...) cannot load. torchvision imports without them (extension._has_ops() is False)
# except for two fake-kernel registrations (0.28, 0.29) that need the nms / qnms schemas. Those
# two schemas, defined without a kernel, let it import: its models use no C++ op, and calling
# torchvision.ops.nms still fails with a clear "no kernel" error.
_UNLOADED_OPS = (
    "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
)
_schemas: list[torch.library.Library] = []  # kept alive: the schemas live as long as the library


def import_torchvision() -> Any:
    """`import torchvision`, also where its C++ ops do not load against this torch."""
    try:
        return importlib.import_module("torchvision")
    except RuntimeError as exc:
        if "operator torchvision::" not in str(exc) or _schemas:
            raise
    for module in [m for m in sys.modules if m.split(".")[0] == "torchvision"]:
        del sys.modules[module]  # the half-imported package, so that it imports afresh
    _schemas.append(torch.library.Library("torchvision", "DEF"))
    for schema in _UNLOADED_OPS:
        _schemas[0].define(schema)
    return importlib.import_module("torchvision")


def _import(module: str, name: str) -> Any:
    package = module.partition(".")[0]  # what pip installs: torchvision, not torchvision.models
    try:
        import_torchvision()  # timm imports it too
        return importlib.import_module(module)
    except Exception as exc:  # absent, or present but broken against this torch
        raise EnvironmentMissingError(
            f"encoder {name} needs the '{package}' package, which does not import here ({exc}); "
            f"install it (pip install {package}, matching your torch; or lrmil[models]) or use "
            "a built-in encoder"
        ) from None


def _candidates(model: nn.Module) -> dict[str, nn.Module]:
    """Modules whose outputs may be layers: a transformer's blocks, timm's feature stages, or
    the top-level children of a torchvision network."""
    blocks = getattr(model, "blocks", None)
    if isinstance(blocks, nn.Sequential | nn.ModuleList):
        return {f"block{i + 1}": b for i, b in enumerate(blocks)}
    modules = dict(model.named_modules())
    info = getattr(model, "feature_info", None)
    names = (
        [f["module"] for f in info]
        if isinstance(info, list)
        else [n for n, _ in model.named_children()]
    )
    return {name.replace(".", "_"): modules[name] for name in names if name in modules}


class _Recorder:
    """Forward hooks that keep the outputs of the named modules during one call."""

    def __init__(self, modules: dict[str, nn.Module]) -> None:
        self.modules = modules
        self.outputs: dict[str, torch.Tensor] = {}

    def __enter__(self) -> dict[str, torch.Tensor]:
        self.handles = [
            m.register_forward_hook(
                lambda _m, _i, out, name=name: self.outputs.__setitem__(name, out)
            )
            for name, m in self.modules.items()
        ]
        return self.outputs

    def __exit__(self, *exc: object) -> None:
        for handle in self.handles:
            handle.remove()


def _split(out: torch.Tensor, n_prefix: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A layer output -> (grid (B, G, G, C), pooled (B, C))."""
    if out.dim() == 4:  # CNN map (B, C, H, W)
        return out.permute(0, 2, 3, 1), out.mean(dim=(2, 3))
    side = int((out.shape[1] - n_prefix) ** 0.5)
    return out[:, n_prefix:].reshape(out.shape[0], side, side, -1), out[:, 0]


def _hooked_encoder(
    name: str, model: nn.Module, mean: Sequence[float], std: Sequence[float], probe: int
) -> Encoder:
    n_prefix = int(getattr(model, "num_prefix_tokens", 1))
    candidates = _candidates(model)
    with torch.no_grad(), _Recorder(candidates) as outputs:
        embedding = model.eval()(torch.zeros(1, 3, probe, probe))
    dims, strides = {}, {}
    for layer, out in outputs.items():
        if isinstance(out, torch.Tensor) and out.dim() in (3, 4):
            grid, _ = _split(out, n_prefix)
            if grid.shape[1] >= 2 and probe % grid.shape[1] == 0:
                dims[layer], strides[layer] = grid.shape[-1], probe // grid.shape[1]
    modules = {layer: candidates[layer] for layer in dims}

    def features(m: nn.Module, x: torch.Tensor, layers: Sequence[str]) -> LayerFeatures:
        with _Recorder({layer: modules[layer] for layer in layers}) as outs:
            emb = m(x)
        split = {layer: _split(outs[layer], n_prefix) for layer in layers}
        return emb, {k: v[0] for k, v in split.items()}, {k: v[1] for k, v in split.items()}

    return Encoder(
        name=name,
        model=model,
        preprocess=Preprocess(mean, std),
        dim=embedding.shape[1],
        precision=torch.bfloat16,
        layer_dims=dims,
        layer_strides=strides,
        default_layers=tuple(dims)[-2:],
        features_fn=features,
    )


def _with_weights(make: Callable[[], nn.Module], weights: str | None, name: str) -> nn.Module:
    """`make()`, with `weights` loaded. With weights it is built on the meta device and the
    file's tensors are taken as they are (ViT-L's random initialisation alone takes ~20 s on a
    CPU); again on the CPU if a tensor the file cannot hold (a non-persistent buffer) is left."""
    if weights is None:
        return make()
    with torch.device("meta"):
        model = make()
    load_weights(model, weights, name, ignore_prefixes=HEAD_PREFIXES, assign=True)
    if any(t.is_meta for t in itertools.chain(model.parameters(), model.buffers())):
        model = make()
        load_weights(model, weights, name, ignore_prefixes=HEAD_PREFIXES)
    return model


def timm_model(arch: str, kwargs: dict[str, Any], name: str | None = None) -> nn.Module:
    """timm.create_model(arch, **kwargs) headless, never pretrained; ViTs with
    dynamic_img_size (position embeddings interpolated for any patch size) unless told otherwise."""
    timm = _import("timm", name or f"timm:{arch}")
    try:
        return timm.create_model(
            arch, pretrained=False, num_classes=0, **{"dynamic_img_size": True, **kwargs}
        )
    except TypeError:  # an architecture without that option (CNNs)
        if "dynamic_img_size" in kwargs:
            raise
        return timm.create_model(arch, pretrained=False, num_classes=0, **kwargs)


def build_timm(name: str, arch: str, weights: str | None, model_kwargs: dict[str, Any]) -> Encoder:
    """`model_kwargs` go to timm.create_model, except `mean` and `std` (the normalisation;
    default: the model's pretrained config)."""
    kwargs = dict(model_kwargs)
    mean, std = kwargs.pop("mean", None), kwargs.pop("std", None)
    try:
        model = _with_weights(lambda: timm_model(arch, kwargs, name), weights, name)
    except (RuntimeError, TypeError) as exc:  # "Unknown model", a wrong argument
        raise ConfigError(f"encoder {name}: {exc}") from None
    cfg = getattr(model, "pretrained_cfg", {}) or {}
    native = getattr(getattr(model, "patch_embed", None), "img_size", None)  # ViT's own size
    probe = int(native[0]) if native else int(cfg.get("input_size", (3, 224, 224))[-1])
    mean = mean or cfg.get("mean", IMAGENET_MEAN)
    return _hooked_encoder(name, model, mean, std or cfg.get("std", IMAGENET_STD), probe)


def build_torchvision(
    name: str, arch: str, weights: str | None, model_kwargs: dict[str, Any]
) -> Encoder:
    models = _import("torchvision.models", name)
    kwargs = dict(model_kwargs)
    mean, std = kwargs.pop("mean", IMAGENET_MEAN), kwargs.pop("std", IMAGENET_STD)

    def make() -> nn.Module:
        model = models.get_model(arch, weights=None, **kwargs)
        for head in ("fc", "classifier", "heads"):
            if hasattr(model, head):
                setattr(model, head, nn.Identity())
        return model

    try:
        model = _with_weights(make, weights, name)
    except (ValueError, KeyError, TypeError) as exc:  # an unknown model, a wrong argument
        raise ConfigError(f"encoder {name}: {exc}") from None
    return _hooked_encoder(name, model, mean, std, probe=224)
