"""Fused kernels (csrc/) with PyTorch autograd, and their pure-PyTorch references."""

from lrmil.ops.align_loss import AlignmentLoss, block_mse, child_mse
from lrmil.ops.attention_pool import GatedAttentionPool, gated_attention_pool

__all__ = [
    "AlignmentLoss",
    "GatedAttentionPool",
    "block_mse",
    "child_mse",
    "gated_attention_pool",
]
