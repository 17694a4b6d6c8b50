"""Bags and their packing: several bags of any size in one (T, D) tensor with offsets."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch


@dataclass
class Bag:
    """One slide: its instance features and label, and what a student distils from."""

    name: str
    features: torch.Tensor  # (N, D)
    label: int
    teacher_logits: torch.Tensor | None = None  # (C,) the teacher's slide logits
    teacher_attn: torch.Tensor | None = None  # (N,) teacher attention logits per instance


@dataclass
class Batch:
    names: list[str]
    x: torch.Tensor  # (T, D) packed instances
    offsets: torch.Tensor  # (B+1,) int64, bag b is x[offsets[b]:offsets[b+1]]
    labels: torch.Tensor  # (B,) int64
    teacher_logits: torch.Tensor | None  # (B, C)
    teacher_attn: torch.Tensor | None  # (T,)

    def to(self, device: torch.device | str) -> Batch:
        def move(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.to(device, non_blocking=True)

        return Batch(self.names, move(self.x), move(self.offsets), move(self.labels),
                     move(self.teacher_logits), move(self.teacher_attn))


def pack(tensors: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Concatenate bags along dim 0 and return them with their offsets (B+1,) int64."""
    lengths = torch.tensor([0] + [t.shape[0] for t in tensors], dtype=torch.int64)
    return torch.cat(list(tensors)), torch.cumsum(lengths, 0)


def collate(bags: Sequence[Bag]) -> Batch:
    """Pack bags into one batch; teacher targets are kept only when every bag has them."""
    x, offsets = pack([b.features for b in bags])
    labels = torch.tensor([b.label for b in bags], dtype=torch.int64)
    t_logits = (torch.stack([b.teacher_logits for b in bags])
                if all(b.teacher_logits is not None for b in bags) else None)
    t_attn = (torch.cat([b.teacher_attn for b in bags])
              if all(b.teacher_attn is not None for b in bags) else None)
    return Batch([b.name for b in bags], x, offsets, labels, t_logits, t_attn)
