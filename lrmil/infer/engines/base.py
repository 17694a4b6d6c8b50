"""The one interface every inference engine offers."""

from __future__ import annotations

from typing import Protocol

import torch

from lrmil.export.sidecar import ModelMeta


class Engine(Protocol):
    """Runs the two LR graphs. Inputs may live on any device; outputs are float32 tensors."""

    name: str  # "torch" | "onnx" | "trt"
    meta: ModelMeta
    device: torch.device  # where `encode` wants its patches (a CPU tensor also works)

    def encode(self, patches: torch.Tensor) -> torch.Tensor:
        """uint8 (B, P, P, 3) patches -> (B, D) embeddings."""
        ...

    def aggregate(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One bag (N, D) -> (class probabilities (C,), attention (N,))."""
        ...
