"""Fused kernels (csrc/) with PyTorch autograd, and their pure-PyTorch references."""

from lrmil.ops.attention_pool import GatedAttentionPool, gated_attention_pool

__all__ = ["GatedAttentionPool", "gated_attention_pool"]
