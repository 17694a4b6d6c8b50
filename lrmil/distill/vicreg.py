"""VICReg (Bardes, Ponce & LeCun, ICLR 2022), the self-supervised objective More From Less
(Farndale et al. 2023) distils an information-dense modality with; here between an LR patch's
embedding and the attention-weighted embedding of its HR children (`stage1.objective=vicreg`).

Both sides go through one projector (Linear-BatchNorm-ReLU blocks, then a Linear: the VICReg
paper's, with widths `stage1.vicreg_projector`). With z_a, z_b (B, E) the projected rows:

    invariance = mean_{b,e} (z_a - z_b)^2
    variance   = mean_e relu(1 - sqrt(var_b(z_a) + eps)) / 2 + (same for z_b) / 2
    covariance = sum_{e != e'} C(z_a)_{ee'}^2 / E + (same for z_b)

with var and C the unbiased (B - 1) per-batch statistics over the B rows (one per LR patch,
whatever its number of valid children), eps = 1e-4; the loss is sim * invariance + var *
variance + cov * covariance (defaults 25 / 25 / 1, the paper's). A batch of one row has no
variance, and BatchNorm cannot train on it: such a batch is skipped (`VICRegTerms` refuses it).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

EPS = 1e-4  # inside the square root of the variance term (the paper's)


class Projector(nn.Module):
    """Linear-BatchNorm-ReLU for every width but the last, then a Linear to the last width."""

    def __init__(self, in_dim: int, widths: list[int]) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for width in widths[:-1]:
            layers += [nn.Linear(in_dim, width), nn.BatchNorm1d(width), nn.ReLU()]
            in_dim = width
        layers.append(nn.Linear(in_dim, widths[-1]))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


@dataclass
class VICRegTerms:
    invariance: torch.Tensor
    variance: torch.Tensor
    covariance: torch.Tensor

    def loss(self, sim: float, var: float, cov: float) -> torch.Tensor:
        return sim * self.invariance + var * self.variance + cov * self.covariance


def weighted_children(t: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """(B, D): each row's children (B, K, D) averaged with its weights (B, K), which are 0 on
    invalid children and sum to 1 over the valid ones."""
    return torch.einsum("bk,bkd->bd", weight.to(t.dtype), t)


def vicreg_terms(z_a: torch.Tensor, z_b: torch.Tensor) -> VICRegTerms:
    """The three terms (module doc) of two (B, E) batches, B >= 2, in fp32."""
    if z_a.shape != z_b.shape or z_a.dim() != 2:
        raise ValueError(f"VICReg needs two (B, E) batches of one shape, got "
                         f"{tuple(z_a.shape)} and {tuple(z_b.shape)}")
    rows, width = z_a.shape
    if rows < 2:
        raise ValueError("VICReg needs at least 2 rows per batch (per-batch variance)")
    z_a, z_b = z_a.float(), z_b.float()

    def variance(z: torch.Tensor) -> torch.Tensor:
        return F.relu(1 - torch.sqrt(z.var(dim=0) + EPS)).mean()

    def covariance(z: torch.Tensor) -> torch.Tensor:
        z = z - z.mean(dim=0)
        cov = (z.T @ z) / (rows - 1)
        return (cov.pow(2).sum() - cov.diagonal().pow(2).sum()) / width

    return VICRegTerms(F.mse_loss(z_a, z_b),
                       variance(z_a) / 2 + variance(z_b) / 2,
                       covariance(z_a) + covariance(z_b))
