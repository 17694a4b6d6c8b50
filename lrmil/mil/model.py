"""Gated attention MIL (ABMIL, Ilse et al. 2018) over packed bags, on the fused pooling op."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from lrmil.ops import GatedAttentionPool


@dataclass
class MILOutput:
    logits: torch.Tensor  # (B, C) slide logits
    attn_logits: torch.Tensor  # (T,) pre-softmax attention e_j
    attn: torch.Tensor  # (T,) softmax of e_j within each bag
    inst_logits: torch.Tensor | None  # (T, 2) instance classifier (student), else None


class InputStats:
    """Per-dimension mean and unbiased std of instances added bag by bag (Chan et al.'s
    pairwise update, in float64): the training set's statistics without holding it."""

    def __init__(self) -> None:
        self.count = 0
        self._mean: torch.Tensor | None = None
        self._m2: torch.Tensor | None = None

    def add(self, x: torch.Tensor) -> None:
        """Add the instances `x (N, D)` of one bag."""
        if len(x) == 0:
            return
        x = x.double()
        mean, n = x.mean(0), len(x)
        m2 = ((x - mean) ** 2).sum(0)
        if self._mean is None or self._m2 is None:
            self._mean, self._m2, self.count = mean, m2, n
            return
        total = self.count + n
        delta = mean - self._mean
        self._mean = self._mean + delta * (n / total)
        self._m2 = self._m2 + m2 + delta**2 * (self.count * n / total)
        self.count = total

    @property
    def mean(self) -> torch.Tensor:
        if self._mean is None:
            raise ValueError("no instance was added")
        return self._mean.float()

    @property
    def std(self) -> torch.Tensor:
        if self._m2 is None or self.count < 2:
            raise ValueError("the standard deviation needs at least two instances")
        return (self._m2 / (self.count - 1)).sqrt().float()


class GatedABMIL(nn.Module):
    """`e_j = w . (tanh(V h_j) * sigmoid(U h_j)) + b_w`, `z = sum_j softmax(e)_j h_j`,
    `logits = C z`; h_j is the instance feature, standardised with per-dimension statistics
    (buffers, set from the training instances by `set_input_stats`; identity until then),
    optionally after a Linear + ReLU projection.

    Takes the instances of B bags packed in `x (T, D)` with `offsets (B+1,)`, so a batch holds
    several bags of different sizes without padding.
    """

    def __init__(self, in_dim: int, n_classes: int, hidden: int = 128,
                 proj_dim: int | None = None, instance_head: bool = False,
                 dropout: float = 0.0) -> None:
        super().__init__()
        self.in_dim, self.n_classes, self.hidden = in_dim, n_classes, hidden
        self.proj_dim = proj_dim
        feat_dim = proj_dim or in_dim
        self.project = (nn.Sequential(nn.Linear(in_dim, proj_dim), nn.ReLU())
                        if proj_dim else nn.Identity())
        self.dropout = nn.Dropout(dropout)
        self.pool = GatedAttentionPool(feat_dim, hidden)
        self.classifier = nn.Linear(feat_dim, n_classes)
        self.instance_head = nn.Linear(feat_dim, 2) if instance_head else None
        self.register_buffer("in_mean", torch.zeros(in_dim))
        self.register_buffer("in_std", torch.ones(in_dim))

    @torch.no_grad()
    def set_input_stats(self, stats: InputStats) -> None:
        """Standardise inputs with the per-dimension mean / std of the training instances:
        encoder features come at any scale, and unscaled ones stall the gate's training."""
        self.in_mean.copy_(stats.mean)
        self.in_std.copy_(stats.std.clamp_min(1e-6))

    def forward(self, x: torch.Tensor, offsets: torch.Tensor) -> MILOutput:
        # In place on the fresh difference: one full-size temporary, not two (the same values;
        # autograd needs neither).
        x = (x - self.in_mean).div_(self.in_std)
        h = self.dropout(self.project(x))
        pooled, attn, attn_logits = self.pool(h, offsets)
        logits = self.classifier(pooled)
        inst = self.instance_head(h) if self.instance_head is not None else None
        return MILOutput(logits, attn_logits, attn, inst)

    def hparams(self) -> dict[str, int | bool | None]:
        """What `from_hparams` needs to rebuild the module (stored beside the weights)."""
        return {"in_dim": self.in_dim, "n_classes": self.n_classes, "hidden": self.hidden,
                "proj_dim": self.proj_dim, "instance_head": self.instance_head is not None}

    @classmethod
    def from_hparams(cls, hparams: dict) -> GatedABMIL:
        return cls(int(hparams["in_dim"]), int(hparams["n_classes"]), int(hparams["hidden"]),
                   int(hparams["proj_dim"]) if hparams.get("proj_dim") else None,
                   bool(hparams["instance_head"]))
