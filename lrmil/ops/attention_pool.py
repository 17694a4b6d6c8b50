"""Gated attention pooling (ABMIL) over packed ragged bags, on the fused C++/CUDA kernels.

The bags of a batch are packed row after row in `x (T, D)`; bag b holds rows
`offsets[b]:offsets[b+1]` (flash-attention's cu_seqlens). Given the gate projections
`proj = x @ [V | U] + [b_V | b_U]`, one op computes

    logits_t = w . (tanh(proj[t, :L]) * sigmoid(proj[t, L:])) + b_w
    attn     = softmax of logits within each bag (max-subtracted)
    pooled_b = sum over the rows t of bag b of attn_t * x_t

and its backward recomputes the gate from proj instead of storing (T, L) activations.

Conventions:
- pooled has x's dtype; attn and logits are float32 (float64 for float64 inputs), the precision
  the kernels accumulate in, so attention losses and heatmaps never see rounded weights.
- Empty bags pool to zeros (and get zero gradients); so do bags whose logits are all -inf.
- offsets may be int64 or int32 (converted: it is B + 1 numbers); any other dtype is refused.
- proj and x may be row-strided views (slices of larger buffers) and are read in place; only a
  tensor whose columns are not contiguous (e.g. a transpose) is copied, since the kernels'
  inner loops run along columns.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from lrmil.ops import _ext, reference

__all__ = ["GatedAttentionPool", "gated_attention_pool"]

_FLOAT_DTYPES = tuple(_ext.DTYPE_CODES)


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _unit_columns(t: Tensor) -> Tensor:
    return t if t.stride(-1) == 1 or t.shape[-1] == 1 else t.contiguous()


def _device_index(t: Tensor) -> int:
    return -1 if t.device.type == "cpu" else t.device.index or 0


def _check_offset_values(offsets: Tensor, n_rows: int) -> None:
    """The data-dependent checks (they read offsets, so they run inside the op)."""
    if offsets.device.type != "cpu":
        offsets = offsets.cpu()  # B + 1 numbers; the CUDA kernels need them valid too
    if int(offsets[0]) != 0:
        raise ValueError(f"gated_attention_pool: offsets[0] must be 0, got {int(offsets[0])}")
    if int(offsets[-1]) != n_rows:
        raise ValueError(
            f"gated_attention_pool: offsets[-1] must equal T = x.shape[0] = {n_rows}, "
            f"got {int(offsets[-1])}"
        )
    steps = offsets[1:] - offsets[:-1]
    if bool((steps < 0).any()):
        bag = int(torch.nonzero(steps < 0)[0, 0])
        raise ValueError(
            f"gated_attention_pool: offsets must be non-decreasing, but offsets[{bag + 1}] = "
            f"{int(offsets[bag + 1])} < offsets[{bag}] = {int(offsets[bag])}"
        )


@torch.library.custom_op("lrmil::gated_attention_pool", mutates_args=())
def _pool_op(
    proj: Tensor, x: Tensor, w: Tensor, b_w: Tensor, offsets: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    n_rows, dim = x.shape
    _check_offset_values(offsets, n_rows)
    proj, x = _unit_columns(proj), _unit_columns(x)
    w, b_w, offsets = w.contiguous(), b_w.contiguous(), offsets.contiguous()
    n_bags = offsets.shape[0] - 1
    acc = _acc_dtype(x.dtype)
    pooled = x.new_empty(n_bags, dim)
    attn = x.new_empty(n_rows, dtype=acc)
    logits = x.new_empty(n_rows, dtype=acc)
    _ext.lib().attention_pool_forward(
        n_rows=n_rows, n_bags=n_bags, hidden=w.shape[0], dim=dim,
        dtype=_ext.DTYPE_CODES[x.dtype],
        proj=proj.data_ptr(), proj_row_stride=proj.stride(0),
        x=x.data_ptr(), x_row_stride=x.stride(0),
        w=w.data_ptr(), b_w=b_w.data_ptr(), offsets=offsets.data_ptr(),
        pooled=pooled.data_ptr(), attn=attn.data_ptr(), logits=logits.data_ptr(),
        device=_device_index(x), stream=_ext.stream_of(x),
    )  # fmt: skip
    return pooled, attn, logits


@_pool_op.register_fake
def _(proj, x, w, b_w, offsets):
    acc = _acc_dtype(x.dtype)
    n_rows = x.shape[0]
    return (
        x.new_empty(offsets.shape[0] - 1, x.shape[1]),
        x.new_empty(n_rows, dtype=acc),
        x.new_empty(n_rows, dtype=acc),
    )


def _launch_backward(
    grad_pooled, grad_attn, grad_logits, proj, x, w, b_w, offsets, attn, need_grad_x, grad_proj
):
    """Runs the backward kernel, writing grad_proj into `grad_proj` (which may be proj itself:
    each element of proj is read before its gradient is written, by the same thread)."""
    proj, x = _unit_columns(proj), _unit_columns(x)
    # Gradients of sums arrive as expanded (stride 0) views; the kernel reads rows in place.
    grad_pooled = _unit_columns(grad_pooled.to(x.dtype))
    acc = _acc_dtype(x.dtype)
    grad_attn = None if grad_attn is None else grad_attn.to(acc).contiguous()
    grad_logits = None if grad_logits is None else grad_logits.to(acc).contiguous()
    w, b_w, offsets, attn = (
        w.contiguous(),
        b_w.contiguous(),
        offsets.contiguous(),
        attn.contiguous(),
    )
    n_rows, dim = x.shape
    grad_x = x.new_empty(x.shape if need_grad_x else (0, dim))
    grad_w = torch.empty_like(w)
    grad_b_w = torch.empty_like(b_w)
    _ext.lib().attention_pool_backward(
        n_rows=n_rows, n_bags=offsets.shape[0] - 1, hidden=w.shape[0], dim=dim,
        dtype=_ext.DTYPE_CODES[x.dtype],
        proj=proj.data_ptr(), proj_row_stride=proj.stride(0),
        x=x.data_ptr(), x_row_stride=x.stride(0),
        w=w.data_ptr(), b_w=b_w.data_ptr(), offsets=offsets.data_ptr(), attn=attn.data_ptr(),
        grad_pooled=grad_pooled.data_ptr(), grad_pooled_row_stride=grad_pooled.stride(0),
        grad_attn=0 if grad_attn is None else grad_attn.data_ptr(),
        grad_logits=0 if grad_logits is None else grad_logits.data_ptr(),
        grad_proj=grad_proj.data_ptr(), grad_x=grad_x.data_ptr() if need_grad_x else 0,
        grad_w=grad_w.data_ptr(), grad_b_w=grad_b_w.data_ptr(),
        device=_device_index(x), stream=_ext.stream_of(x),
    )  # fmt: skip
    return grad_x, grad_w, grad_b_w


@torch.library.custom_op("lrmil::gated_attention_pool_backward", mutates_args=())
def _pool_backward_op(
    grad_pooled: Tensor,
    grad_attn: Tensor | None,
    grad_logits: Tensor | None,
    proj: Tensor,
    x: Tensor,
    w: Tensor,
    b_w: Tensor,
    offsets: Tensor,
    attn: Tensor,
    need_grad_x: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Gradients to proj, x, w and b_w; grad_x is empty (0 rows) unless need_grad_x."""
    grad_proj = torch.empty(proj.shape, dtype=proj.dtype, device=proj.device)
    grads = _launch_backward(
        grad_pooled, grad_attn, grad_logits, proj, x, w, b_w, offsets, attn, need_grad_x, grad_proj
    )
    return grad_proj, *grads


@_pool_backward_op.register_fake
def _(grad_pooled, grad_attn, grad_logits, proj, x, w, b_w, offsets, attn, need_grad_x):
    return (
        torch.empty(proj.shape, dtype=proj.dtype, device=proj.device),
        x.new_empty(x.shape if need_grad_x else (0, x.shape[1])),
        torch.empty_like(w),
        torch.empty_like(b_w),
    )


@torch.library.custom_op("lrmil::gated_attention_pool_backward_", mutates_args=("proj",))
def _pool_backward_inplace_op(
    grad_pooled: Tensor,
    grad_attn: Tensor | None,
    grad_logits: Tensor | None,
    proj: Tensor,
    x: Tensor,
    w: Tensor,
    b_w: Tensor,
    offsets: Tensor,
    attn: Tensor,
    need_grad_x: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    """As gated_attention_pool_backward, but overwrites proj (contiguous) with its gradient:
    no second (T, 2L) buffer. Returns grad_x (empty unless need_grad_x), grad_w, grad_b_w."""
    if not proj.is_contiguous():
        raise ValueError("gated_attention_pool_backward_: proj must be contiguous")
    return _launch_backward(
        grad_pooled, grad_attn, grad_logits, proj, x, w, b_w, offsets, attn, need_grad_x, proj
    )


@_pool_backward_inplace_op.register_fake
def _(grad_pooled, grad_attn, grad_logits, proj, x, w, b_w, offsets, attn, need_grad_x):
    return (
        x.new_empty(x.shape if need_grad_x else (0, x.shape[1])),
        torch.empty_like(w),
        torch.empty_like(b_w),
    )


def _setup_context(ctx, inputs, output):
    proj, x, w, b_w, offsets = inputs
    ctx.save_for_backward(proj, x, w, b_w, offsets, output[1])


def _backward(ctx, grad_pooled, grad_attn, grad_logits):
    proj, x, w, b_w, offsets, attn = ctx.saved_tensors
    need_grad_x = ctx.needs_input_grad[1]
    grad_proj, grad_x, grad_w, grad_b_w = _pool_backward_op(
        grad_pooled, grad_attn, grad_logits, proj, x, w, b_w, offsets, attn, need_grad_x
    )
    return grad_proj, grad_x if need_grad_x else None, grad_w, grad_b_w, None


torch.library.register_autograd(_pool_op, _backward, setup_context=_setup_context)


def _check_args(proj, x, w, b_w, offsets) -> None:
    """Metadata checks (shapes, dtypes, devices): cheap and traceable by torch.compile."""
    for name, value in (("proj", proj), ("x", x), ("w", w), ("b_w", b_w), ("offsets", offsets)):
        if not isinstance(value, Tensor):
            raise TypeError(
                f"gated_attention_pool: {name} must be a torch.Tensor, got {type(value)}"
            )
    if x.dim() != 2:
        raise ValueError(f"gated_attention_pool: x must be (T, D), got shape {tuple(x.shape)}")
    if proj.dim() != 2:
        raise ValueError(
            f"gated_attention_pool: proj must be (T, 2L), got shape {tuple(proj.shape)}"
        )
    if w.dim() != 1 or w.shape[0] == 0:
        raise ValueError(
            f"gated_attention_pool: w must be (L,) with L >= 1, got shape {tuple(w.shape)}"
        )
    if b_w.numel() != 1:
        raise ValueError(
            f"gated_attention_pool: b_w must be a scalar tensor, got shape {tuple(b_w.shape)}"
        )
    if offsets.dim() != 1 or offsets.shape[0] == 0:
        raise ValueError(
            f"gated_attention_pool: offsets must be (B + 1,), got shape {tuple(offsets.shape)}"
        )
    if proj.shape[0] != x.shape[0] or proj.shape[1] != 2 * w.shape[0]:
        raise ValueError(
            f"gated_attention_pool: proj must be (T, 2L) = ({x.shape[0]}, {2 * w.shape[0]}) for "
            f"x {tuple(x.shape)} and w {tuple(w.shape)}, got {tuple(proj.shape)}"
        )
    if x.shape[1] == 0:
        raise ValueError(f"gated_attention_pool: x must have D >= 1 columns, got {tuple(x.shape)}")
    if x.dtype not in _FLOAT_DTYPES:
        raise ValueError(
            f"gated_attention_pool: x must be float32, float16, bfloat16 or float64, got {x.dtype}"
        )
    if proj.dtype != x.dtype:
        raise ValueError(
            f"gated_attention_pool: proj ({proj.dtype}) and x ({x.dtype}) must have the same dtype"
        )
    for name, value in (("w", w), ("b_w", b_w)):
        if not value.dtype.is_floating_point:
            raise ValueError(
                f"gated_attention_pool: {name} must be floating point, got {value.dtype}"
            )
    if offsets.dtype not in (torch.int64, torch.int32):
        raise ValueError(
            f"gated_attention_pool: offsets must be int64 (or int32), got {offsets.dtype}"
        )
    for name, value in (("proj", proj), ("w", w), ("b_w", b_w), ("offsets", offsets)):
        if value.device != x.device:
            raise ValueError(
                f"gated_attention_pool: all tensors must be on one device; x is on {x.device} "
                f"but {name} is on {value.device}"
            )
    _ext.check_device_supported("gated_attention_pool", x)


def gated_attention_pool(
    proj: Tensor, x: Tensor, w: Tensor, b_w: Tensor, offsets: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """Fused gated attention pooling over packed ragged bags.

    Args:
        proj: (T, 2L) gate pre-activations [V-part | U-part] (tanh on the first L columns,
            sigmoid on the last L), same dtype as x.
        x: (T, D) instance features of all bags, packed; float32, float16, bfloat16 or float64.
        w: (L,) attention weights; any float dtype (computed in float32, float64 for float64 x).
        b_w: () attention bias.
        offsets: (B + 1,) int64 (or int32) bag boundaries: offsets[0] = 0, non-decreasing,
            offsets[B] = T.

    Returns:
        pooled (B, D) in x's dtype, attn (T,) and logits (T,) in float32 (float64 for float64 x).
        Differentiable with respect to proj, x, w and b_w.
    """
    _check_args(proj, x, w, b_w, offsets)
    acc = _acc_dtype(x.dtype)
    return _pool_op(proj, x, w.to(acc), b_w.to(acc).reshape(()), offsets.to(torch.int64))


class _GatedAttentionLayer(torch.autograd.Function):
    """Projection GEMM + fused pooling as one autograd node. It keeps proj (T, 2L) for backward
    and overwrites it there with its own gradient, so a training step holds one (T, 2L) buffer
    where autograd would hold proj and grad_proj (and eager code the gate activations too).
    Hence its backward can run only once per forward (retain_graph is refused)."""

    @staticmethod
    def forward(ctx, x, weight, bias, w, b_w, offsets):
        proj = torch.nn.functional.linear(x, weight, bias).to(x.dtype)
        pooled, attn, logits = _pool_op(proj, x, w, b_w, offsets)
        ctx.save_for_backward(x, weight, proj, w, b_w, offsets, attn)
        ctx.backward_done = False
        return pooled, attn, logits

    @staticmethod
    def backward(ctx, grad_pooled, grad_attn, grad_logits):
        if ctx.backward_done:
            raise RuntimeError(
                "GatedAttentionPool: backward ran twice through one forward (retain_graph); "
                "its backward reuses the forward's buffers, run the forward again instead"
            )
        ctx.backward_done = True
        x, weight, proj, w, b_w, offsets, attn = ctx.saved_tensors
        need_x = ctx.needs_input_grad[0]
        grad_x, grad_w, grad_b_w = _pool_backward_inplace_op(
            grad_pooled, grad_attn, grad_logits, proj, x, w, b_w, offsets, attn, need_x
        )
        grad_proj = proj  # now holds d loss / d proj
        grad_weight = (grad_proj.t() @ x).to(weight.dtype)
        grad_bias = grad_proj.sum(0).to(weight.dtype)
        if need_x:
            grad_x = grad_x + grad_proj @ weight.to(grad_proj.dtype)
        return grad_x if need_x else None, grad_weight, grad_bias, grad_w, grad_b_w, None


def _exporting() -> bool:
    return torch.compiler.is_exporting() or torch.onnx.is_in_onnx_export()


class GatedAttentionPool(nn.Module):
    """Gated attention MIL pooling (Ilse et al. 2018) over packed ragged bags.

    Holds V and U as one Linear(in_dim, 2 * hidden) (its output is `proj`), w (hidden,) and
    b_w (); the projection GEMM runs in torch (MKL / cuBLAS), the rest in the fused op. In
    training, GEMM and pooling form one autograd node whose backward overwrites proj with its
    gradient (one (T, 2L) buffer per step; backward runs once per forward, no retain_graph).
    Under torch.export / ONNX export it runs the pure-torch reference so that exported graphs
    hold no custom op.

    forward(x (T, in_dim), offsets (B + 1,)) -> (pooled (B, in_dim), attn (T,), logits (T,)).
    """

    def __init__(self, in_dim: int, hidden: int = 128) -> None:
        super().__init__()
        if in_dim < 1 or hidden < 1:
            raise ValueError(
                f"GatedAttentionPool: in_dim and hidden must be >= 1, got {in_dim}, {hidden}"
            )
        self.in_dim, self.hidden = in_dim, hidden
        self.gate = nn.Linear(in_dim, 2 * hidden)
        bound = 1.0 / math.sqrt(hidden)  # nn.Linear(hidden, 1)'s initialisation
        self.w = nn.Parameter(torch.empty(hidden).uniform_(-bound, bound))
        self.b_w = nn.Parameter(torch.empty(()).uniform_(-bound, bound))

    def forward(self, x: Tensor, offsets: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        if x.dim() != 2 or x.shape[1] != self.in_dim:
            raise ValueError(
                f"GatedAttentionPool: x must be (T, {self.in_dim}), got shape {tuple(x.shape)}"
            )
        if _exporting():
            return reference.gated_attention_pool(self.gate(x), x, self.w, self.b_w, offsets)
        if not torch.is_grad_enabled():
            # Under autocast the GEMM may return a lower precision than x: the op wants one.
            proj = self.gate(x).to(x.dtype)
            return gated_attention_pool(proj, x, self.w, self.b_w, offsets)
        # proj is made inside from x: check the rest with a zero-copy stand-in of its shape.
        proj_like = x.new_empty(1, 1).expand(x.shape[0], 2 * self.hidden)
        _check_args(proj_like, x, self.w, self.b_w, offsets)
        acc = _acc_dtype(x.dtype)
        w, b_w = self.w.to(acc), self.b_w.to(acc).reshape(())
        return _GatedAttentionLayer.apply(
            x, self.gate.weight, self.gate.bias, w, b_w, offsets.to(torch.int64)
        )

    def extra_repr(self) -> str:
        return f"in_dim={self.in_dim}, hidden={self.hidden}"
