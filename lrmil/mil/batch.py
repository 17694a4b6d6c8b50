"""Bags and their packing: several bags of any size in one (T, D) tensor with offsets."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Self

import torch


@dataclass
class Bag:
    """One slide: its instance features and label."""

    name: str
    features: torch.Tensor  # (N, D) as stored (float16 or float32): `pack` widens them
    label: int


@dataclass
class Batch:
    names: list[str]
    x: torch.Tensor  # (T, D) packed instances
    offsets: torch.Tensor  # (B+1,) int64, bag b is x[offsets[b]:offsets[b+1]]
    labels: torch.Tensor  # (B,) int64

    def to(self, device: torch.device | str) -> Self:
        """A copy with every tensor field on `device` (subclasses' fields included)."""
        moved = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        return dataclasses.replace(self, **{
            k: v.to(device, non_blocking=True) for k, v in moved.items()
            if isinstance(v, torch.Tensor)})


def pack(tensors: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Concatenate bags along dim 0, at least float32, and return them with their offsets
    (B+1,) int64. float16 bags (features as stored) are widened while they are copied in: a
    batch costs one float32 copy, not one per bag plus the packed one."""
    lengths = torch.tensor([0] + [t.shape[0] for t in tensors], dtype=torch.int64)
    offsets = torch.cumsum(lengths, 0)
    first = tensors[0]
    x = torch.empty((int(offsets[-1]), *first.shape[1:]), device=first.device,
                    dtype=torch.promote_types(first.dtype, torch.float32))
    return torch.cat(list(tensors), out=x), offsets


def collate(bags: Sequence[Bag]) -> Batch:
    """Pack bags into one batch."""
    x, offsets = pack([b.features for b in bags])
    labels = torch.tensor([b.label for b in bags], dtype=torch.int64)
    return Batch([b.name for b in bags], x, offsets, labels)
