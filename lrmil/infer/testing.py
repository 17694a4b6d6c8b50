"""Tiny models with the encoder and MIL contracts, for fast tests and benchmarks of the
inference path (export, engines, pipeline) without a trained run."""

from __future__ import annotations

from types import SimpleNamespace

import torch
from torch import nn

from lrmil.export.graphs import EncoderGraph, HeadGraph
from lrmil.export.sidecar import ModelMeta


class ScalePixels(nn.Module):
    """uint8 (B, H, W, 3) -> float (B, 3, H, W) in [0, 1]."""

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        return patches.permute(0, 3, 1, 2).float() / 255


class TinyGatedMIL(nn.Module):
    """Gated ABMIL over packed bags in plain tensor ops (no custom kernels), so it exports
    anywhere; same `forward(x, offsets)` contract as lrmil.mil.GatedABMIL."""

    def __init__(self, dim: int, n_classes: int, hidden: int = 8) -> None:
        super().__init__()
        self.hidden = hidden
        self.gate = nn.Linear(dim, 2 * hidden)
        self.w = nn.Parameter(torch.randn(hidden) / hidden**0.5)
        self.b_w = nn.Parameter(torch.zeros(()))
        self.classifier = nn.Linear(dim, n_classes)

    def forward(self, x: torch.Tensor, offsets: torch.Tensor) -> SimpleNamespace:
        n_bags = offsets.shape[0] - 1
        # bag index of every instance; a (T, B) comparison exports where searchsorted does not
        bag = (torch.arange(x.shape[0], device=x.device)[:, None] >= offsets[1:][None, :]).sum(1)
        v, u = self.gate(x).split(self.hidden, dim=-1)
        logits = (torch.tanh(v) * torch.sigmoid(u)) @ self.w + self.b_w
        peak = torch.full((n_bags,), float("-inf"), device=x.device)
        peak = peak.scatter_reduce(0, bag, logits, "amax")
        e = torch.exp(logits - peak[bag])
        attn = e / torch.zeros(n_bags, device=x.device).index_add(0, bag, e)[bag]
        pooled = torch.zeros(n_bags, x.shape[1], device=x.device).index_add(0, bag,
                                                                            attn[:, None] * x)
        return SimpleNamespace(logits=self.classifier(pooled), attn=attn, attn_logits=logits)


def tiny_model(dim: int = 16, n_classes: int = 2, patch_size: int = 32,
               seed: int = 0) -> tuple[EncoderGraph, HeadGraph, ModelMeta]:
    """A small CNN encoder and gated MIL head with their metadata (LR 5x, 20x level pairs)."""
    torch.manual_seed(seed)
    cnn = nn.Sequential(
        nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(),
        nn.Conv2d(8, dim, 3, stride=2, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(),
    )
    meta = ModelMeta(encoder="tiny-cnn", feature_dim=dim, patch_size=patch_size,
                     magnification=5.0, class_names=[f"class{i}" for i in range(n_classes)],
                     source_sha256="tiny")
    return (EncoderGraph(ScalePixels(), cnn).eval(), HeadGraph(TinyGatedMIL(dim, n_classes)).eval(),
            meta)


def make_tiny_run(root, monkeypatch, tiny_lr_model):
    """ROOT/tiny_run: a run folder whose student is the tiny model (lrmil.distill.load_student
    patched through pytest's monkeypatch), the CLI's success path without training anything."""
    import json

    import lrmil.distill
    from lrmil import __version__

    encoder, head, meta = tiny_lr_model
    run = root / "tiny_run"
    (run / "fold_1").mkdir(parents=True)
    (run / "fold_1" / "student.safetensors").write_bytes(b"weights")
    config = {"versions": {"lrmil": __version__}, "class_names": meta.class_names,
              "patch_size": meta.patch_size, "lr_magnification": meta.magnification}
    (run / "config.json").write_text(json.dumps(config))
    student = SimpleNamespace(name=meta.encoder, dim=meta.feature_dim,
                              preprocess=encoder.preprocess, model=encoder.model)
    monkeypatch.setattr(lrmil.distill, "load_student",
                        lambda run, fold=None: (student, head.mil, config))
    return run
