"""Eager PyTorch engine: the graphs as modules, with lrmil's fused ops, on CPU or CUDA."""

from __future__ import annotations

import torch

from lrmil.export.graphs import EncoderGraph, HeadGraph
from lrmil.export.sidecar import ModelMeta


class TorchEngine:
    name = "torch"

    def __init__(self, encoder: EncoderGraph, head: HeadGraph, meta: ModelMeta,
                 device: torch.device | str = "cpu") -> None:
        self.device = torch.device(device)
        self.encoder = encoder.eval().to(self.device)
        self.head = head.eval().to(self.device)
        self.meta = meta

    @torch.inference_mode()
    def encode(self, patches: torch.Tensor) -> torch.Tensor:
        return self.encoder(patches.to(self.device, non_blocking=True)).float()

    @torch.inference_mode()
    def aggregate(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        probs, attn = self.head(features.to(self.device).float())
        return probs.float(), attn.float()
