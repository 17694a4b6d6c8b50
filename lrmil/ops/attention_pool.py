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
from lrmil.ops._ext import acc_dtype

__all__ = ["GatedAttentionPool", "gated_attention_pool"]

OP = "gated_attention_pool"
# Rows of a bag per chunk of the CUDA kernels (csrc/cuda/attention_pool_cuda.cuh, kChunkRows):
# long bags are split into chunks reduced in a fixed order (flash-decoding style).
CUDA_CHUNK_ROWS = 256


def _unit_columns(t: Tensor) -> Tensor:
    return t if t.stride(-1) == 1 or t.shape[-1] == 1 else t.contiguous()


def _check_offset_values(offsets: Tensor, n_rows: int) -> None:
    """The data-dependent checks (they read offsets, so they run inside the op). On the CPU
    they raise ValueError; on a GPU they are device-side asserts queued on the stream (no host
    sync, so CUDA-graph capture works), which fail the next synchronising call."""
    if offsets.is_cuda:
        steps = offsets[1:] - offsets[:-1]
        ok = (offsets[0] == 0) & (offsets[-1] == n_rows) & (steps >= 0).all()
        torch._assert_async(ok, f"{OP}: offsets must start at 0, end at T = {n_rows} and be "
                                "non-decreasing")  # fmt: skip
        return
    if int(offsets[0]) != 0:
        raise ValueError(f"{OP}: offsets[0] must be 0, got {int(offsets[0])}")
    if int(offsets[-1]) != n_rows:
        raise ValueError(
            f"{OP}: offsets[-1] must equal T = x.shape[0] = {n_rows}, got {int(offsets[-1])}"
        )
    steps = offsets[1:] - offsets[:-1]
    if bool((steps < 0).any()):
        bag = int(torch.nonzero(steps < 0)[0, 0])
        raise ValueError(
            f"{OP}: offsets must be non-decreasing, but offsets[{bag + 1}] = "
            f"{int(offsets[bag + 1])} < offsets[{bag}] = {int(offsets[bag])}"
        )


def cuda_chunk_plan(offsets: Tensor, chunk_rows: int) -> Tensor:
    """How the CUDA kernels split bags into chunks of at most chunk_rows rows, computed on the
    offsets' device without a host sync: (2, B + 1) int64, the exclusive prefix sums over bags
    of [the bag's chunks (at least 1: an empty bag still writes its zeros), the bag's
    partial-sum slots (its chunk count when it has several, else 0: a one-chunk bag writes
    pooled directly)]. Their totals never exceed the bounds the C++ side computes from the
    shapes alone (`attention_pool_cuda_layout`), which size the grids and the workspace."""
    lengths = offsets[1:] - offsets[:-1]
    chunks = ((lengths + chunk_rows - 1) // chunk_rows).clamp_min(1)
    slots = torch.where(chunks > 1, chunks, torch.zeros_like(chunks))
    plan = torch.zeros(2, offsets.shape[0], dtype=torch.int64, device=offsets.device)
    plan[0, 1:] = chunks.cumsum(0)
    plan[1, 1:] = slots.cumsum(0)
    return plan


def _cuda_workspace(
    x: Tensor, offsets: Tensor, hidden: int, backward: bool
) -> tuple[Tensor | None, Tensor | None]:
    """(chunk plan, scratch buffer) of a CUDA launch, both from torch's caching allocator on
    the current stream; (None, None) on the CPU."""
    if not x.is_cuda:
        return None, None
    layout = _ext.lib().attention_pool_cuda_layout(
        x.shape[0], offsets.shape[0] - 1, hidden, x.shape[1], _ext.DTYPE_CODES[x.dtype], backward
    )
    plan = cuda_chunk_plan(offsets, layout["chunk_rows"])
    return plan, torch.empty(layout["bytes"], dtype=torch.uint8, device=x.device)


def _ptr(t: Tensor | None) -> int:
    return 0 if t is None else t.data_ptr()


def _nbytes(t: Tensor | None) -> int:
    return 0 if t is None else t.nbytes


@torch.library.custom_op("lrmil::gated_attention_pool", mutates_args=())
def _pool_op(
    proj: Tensor, x: Tensor, w: Tensor, b_w: Tensor, offsets: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    n_rows, dim = x.shape
    _check_offset_values(offsets, n_rows)
    proj, x = _unit_columns(proj), _unit_columns(x)
    w, b_w, offsets = w.contiguous(), b_w.contiguous(), offsets.contiguous()
    n_bags = offsets.shape[0] - 1
    acc = acc_dtype(x.dtype)
    pooled = x.new_empty(n_bags, dim)
    attn = x.new_empty(n_rows, dtype=acc)
    logits = x.new_empty(n_rows, dtype=acc)
    plan, workspace = _cuda_workspace(x, offsets, w.shape[0], backward=False)
    with _ext.on_device(x):
        _ext.lib().attention_pool_forward(
            n_rows=n_rows, n_bags=n_bags, hidden=w.shape[0], dim=dim,
            dtype=_ext.DTYPE_CODES[x.dtype],
            proj=proj.data_ptr(), proj_row_stride=proj.stride(0),
            x=x.data_ptr(), x_row_stride=x.stride(0),
            w=w.data_ptr(), b_w=b_w.data_ptr(), offsets=offsets.data_ptr(),
            pooled=pooled.data_ptr(), attn=attn.data_ptr(), logits=logits.data_ptr(),
            cuda=x.is_cuda, stream=_ext.stream_of(x), plan=_ptr(plan),
            workspace=_ptr(workspace), workspace_bytes=_nbytes(workspace),
        )  # fmt: skip
    return pooled, attn, logits


@_pool_op.register_fake
def _(
    proj: Tensor, x: Tensor, w: Tensor, b_w: Tensor, offsets: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    acc = acc_dtype(x.dtype)
    n_rows = x.shape[0]
    return (
        x.new_empty(offsets.shape[0] - 1, x.shape[1]),
        x.new_empty(n_rows, dtype=acc),
        x.new_empty(n_rows, dtype=acc),
    )


def _launch_backward(
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
    grad_proj: Tensor,
) -> tuple[Tensor, Tensor, Tensor]:
    """Runs the backward kernel, writing grad_proj into `grad_proj` (which may be proj itself:
    each element of proj is read before its gradient is written, by the same thread)."""
    proj, x = _unit_columns(proj), _unit_columns(x)
    # Gradients of sums arrive as expanded (stride 0) views; the kernel reads rows in place.
    grad_pooled = _unit_columns(grad_pooled.to(x.dtype))
    acc = acc_dtype(x.dtype)
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
    plan, workspace = _cuda_workspace(x, offsets, w.shape[0], backward=True)
    with _ext.on_device(x):
        _ext.lib().attention_pool_backward(
            n_rows=n_rows, n_bags=offsets.shape[0] - 1, hidden=w.shape[0], dim=dim,
            dtype=_ext.DTYPE_CODES[x.dtype],
            proj=proj.data_ptr(), proj_row_stride=proj.stride(0),
            x=x.data_ptr(), x_row_stride=x.stride(0),
            w=w.data_ptr(), b_w=b_w.data_ptr(), offsets=offsets.data_ptr(), attn=attn.data_ptr(),
            grad_pooled=grad_pooled.data_ptr(), grad_pooled_row_stride=grad_pooled.stride(0),
            grad_attn=_ptr(grad_attn), grad_logits=_ptr(grad_logits),
            grad_proj=grad_proj.data_ptr(), grad_x=grad_x.data_ptr() if need_grad_x else 0,
            grad_w=grad_w.data_ptr(), grad_b_w=grad_b_w.data_ptr(),
            cuda=x.is_cuda, stream=_ext.stream_of(x), plan=_ptr(plan),
            workspace=_ptr(workspace), workspace_bytes=_nbytes(workspace),
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
def _(
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
        raise ValueError(f"{OP}_backward_: proj must be contiguous")
    return _launch_backward(
        grad_pooled, grad_attn, grad_logits, proj, x, w, b_w, offsets, attn, need_grad_x, proj
    )


@_pool_backward_inplace_op.register_fake
def _(
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
    return (
        x.new_empty(x.shape if need_grad_x else (0, x.shape[1])),
        torch.empty_like(w),
        torch.empty_like(b_w),
    )


def _setup_context(ctx, inputs: tuple, output: tuple) -> None:
    proj, x, w, b_w, offsets = inputs
    ctx.save_for_backward(proj, x, w, b_w, offsets, output[1])


def _backward(
    ctx, grad_pooled: Tensor, grad_attn: Tensor | None, grad_logits: Tensor | None
) -> tuple[Tensor | None, ...]:
    proj, x, w, b_w, offsets, attn = ctx.saved_tensors
    need_grad_x = ctx.needs_input_grad[1]
    grad_proj, grad_x, grad_w, grad_b_w = _pool_backward_op(
        grad_pooled, grad_attn, grad_logits, proj, x, w, b_w, offsets, attn, need_grad_x
    )
    return grad_proj, grad_x if need_grad_x else None, grad_w, grad_b_w, None


torch.library.register_autograd(_pool_op, _backward, setup_context=_setup_context)


def _check_args(proj: Tensor, x: Tensor, w: Tensor, b_w: Tensor, offsets: Tensor) -> None:
    """Metadata checks (shapes, dtypes, devices): cheap and traceable by torch.compile."""
    _ext.check_tensor(OP, "x", x, 2, "(T, D)")
    _ext.check_tensor(OP, "proj", proj, 2, "(T, 2L)")
    _ext.check_tensor(OP, "w", w, 1, "(L,)")
    if not isinstance(b_w, Tensor) or b_w.numel() != 1:
        got = tuple(b_w.shape) if isinstance(b_w, Tensor) else type(b_w).__name__
        raise ValueError(f"{OP}: b_w must be a scalar tensor (), got {got}")
    _ext.check_tensor(OP, "offsets", offsets, 1, "(B + 1,)")
    if w.shape[0] == 0:
        raise ValueError(f"{OP}: w must be (L,) with L >= 1, got shape {tuple(w.shape)}")
    if offsets.shape[0] == 0:
        raise ValueError(f"{OP}: offsets must be (B + 1,) with B >= 0, got shape (0,)")
    if proj.shape[0] != x.shape[0] or proj.shape[1] != 2 * w.shape[0]:
        raise ValueError(
            f"{OP}: proj must be (T, 2L) = ({x.shape[0]}, {2 * w.shape[0]}) for "
            f"x {tuple(x.shape)} and w {tuple(w.shape)}, got {tuple(proj.shape)}"
        )
    if x.shape[1] == 0:
        raise ValueError(f"{OP}: x must have D >= 1 columns, got {tuple(x.shape)}")
    _ext.check_float(OP, "x", x)
    _ext.check_float(OP, "proj", proj, like=("x", x))
    for name, value in (("w", w), ("b_w", b_w)):
        if not value.dtype.is_floating_point:
            raise ValueError(f"{OP}: {name} must be floating point, got {value.dtype}")
    if offsets.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"{OP}: offsets must be int64 (or int32), got {offsets.dtype}")
    _ext.check_same_device(OP, x=x, proj=proj, w=w, b_w=b_w, offsets=offsets)


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
    acc = acc_dtype(x.dtype)
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
        acc = acc_dtype(x.dtype)
        w, b_w = self.w.to(acc), self.b_w.to(acc).reshape(())
        return _GatedAttentionLayer.apply(
            x, self.gate.weight, self.gate.bias, w, b_w, offsets.to(torch.int64)
        )

    def extra_repr(self) -> str:
        return f"in_dim={self.in_dim}, hidden={self.hidden}"
