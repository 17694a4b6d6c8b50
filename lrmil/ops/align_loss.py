"""The cross-resolution alignment loss of stage 1 (method.md), as fused kernels.

`child_mse` and `block_mse` return per-row fp32 losses (fp64 for fp64 inputs) and are reduced
by the caller; `AlignmentLoss` combines them into L_stage1. Both read the teacher tensor once and
give gradients to the student (and to the teacher when it requires grad); the backward starts
from a residual the forward saves, never from the inputs again. child_mse saves s - tbar (N, D)
and makes no (N, K, D) temporary. block_mse saves its block means minus t (N, K, D), the size of
t and 1/16 of S at G = 16, r = 4, as torch.compile does: reading S again instead would cost the
backward as much as the forward (bench/results/align_loss_cpu.md). The definitions live in
`lrmil.ops.reference`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from lrmil.ops._ext import (
    DTYPE_CODES,
    acc_dtype,
    check_float,
    check_same_device,
    check_tensor,
    lib,
    on_device,
    stream_of,
)

# ---- kernel calls (internal: the public functions below validate their inputs) ----


def _cuda_scratch(x: Tensor, rows: int, d: int) -> Tensor:
    """The CUDA forward's per-tile partial losses, (rows, tiles) from torch's allocator on the
    current stream; empty on the CPU."""
    if not x.is_cuda:
        return x.new_empty(0, dtype=acc_dtype(x.dtype))
    return x.new_empty(rows, lib().align_loss_cuda_tiles(d), dtype=acc_dtype(x.dtype))


def _child_mse_fwd(s: Tensor, t: Tensor, weight: Tensor, with_resid: bool) -> tuple[Tensor, Tensor]:
    """(loss (N,), resid (N, D)); weight is in the accumulation dtype. resid = s minus the
    weighted mean of the children, all the gradient to s needs, is empty unless with_resid."""
    n, k, d = t.shape
    acc = acc_dtype(s.dtype)
    loss = s.new_empty(n, dtype=acc)
    resid = s.new_empty((n, d) if with_resid else (0,), dtype=acc)
    partial = _cuda_scratch(s, n, d)
    with on_device(s):
        lib().child_mse_fwd(
            DTYPE_CODES[s.dtype], s.is_cuda, stream_of(s), (n, k, d),
            s.data_ptr(), s.stride(), t.data_ptr(), t.stride(),
            weight.data_ptr(), weight.stride(), loss.data_ptr(),
            resid.data_ptr() if with_resid else 0, partial.data_ptr(),
        )  # fmt: skip
    return loss, resid


def _child_mse_bwd(
    grad: Tensor, s: Tensor, t: Tensor, weight: Tensor, resid: Tensor, s_grad: bool, t_grad: bool
) -> tuple[Tensor, Tensor]:
    """(ds (N, D), dt (N, K, D)); each is empty when its flag is False. ds comes from resid
    alone; s and t are read (and may be empty otherwise) only for dt."""
    ds = resid.new_empty(resid.shape, dtype=s.dtype) if s_grad else s.new_empty(0)
    dt = torch.empty_like(t, memory_format=torch.contiguous_format) if t_grad else t.new_empty(0)
    if not (s_grad or t_grad):
        return ds, dt
    n, k = weight.shape
    d = resid.shape[1] if s_grad else t.shape[2]
    grad = grad.to(weight.dtype).contiguous()
    with on_device(weight):
        lib().child_mse_bwd(
            DTYPE_CODES[s.dtype], weight.is_cuda, stream_of(weight), (n, k, d),
            s.data_ptr(), s.stride() if t_grad else (0, 0), t.data_ptr(),
            t.stride() if t_grad else (0, 0, 0), weight.data_ptr(), weight.stride(),
            resid.data_ptr(), grad.data_ptr(),
            ds.data_ptr() if s_grad else 0, dt.data_ptr() if t_grad else 0,
        )  # fmt: skip
    return ds, dt


def _block_mse_fwd(
    S: Tensor,  # noqa: N803
    t: Tensor,
    valid: Tensor,
    r: int,
    with_resid: bool,
) -> tuple[Tensor, Tensor]:
    """(loss (N,), resid (N, K, D)): resid = block means minus t (0 for invalid children), all
    the gradient needs, in the accumulation dtype; empty unless with_resid."""
    n, g, _, d = S.shape
    acc = acc_dtype(S.dtype)
    loss = S.new_empty(n, dtype=acc)
    resid = S.new_empty((n, r * r, d) if with_resid else (0,), dtype=acc)
    partial = _cuda_scratch(S, n * r * r, d)
    with on_device(S):
        lib().block_mse_fwd(
            DTYPE_CODES[S.dtype], S.is_cuda, stream_of(S), (n, g, r, d),
            S.data_ptr(), S.stride(), t.data_ptr(), t.stride(),
            valid.data_ptr(), valid.stride(), loss.data_ptr(),
            resid.data_ptr() if with_resid else 0, partial.data_ptr(),
        )  # fmt: skip
    return loss, resid


def _block_mse_bwd(
    grad: Tensor, resid: Tensor, valid: Tensor, g: int, dtype: torch.dtype, t_grad: bool
) -> tuple[Tensor, Tensor]:
    """(dS (N, G, G, D), dt (N, K, D)) of the storage dtype, from resid alone; dt is empty when
    t_grad is False."""
    n, k, d = resid.shape
    dS = resid.new_empty((n, g, g, d), dtype=dtype)  # noqa: N806
    dt = resid.new_empty((n, k, d) if t_grad else (0,), dtype=dtype)
    grad = grad.to(resid.dtype).contiguous()
    with on_device(resid):
        lib().block_mse_bwd(
            DTYPE_CODES[dtype], resid.is_cuda, stream_of(resid), (n, g, math.isqrt(k), d),
            valid.data_ptr(), valid.stride(), resid.data_ptr(), grad.data_ptr(),
            dS.data_ptr(), dt.data_ptr() if t_grad else 0,
        )  # fmt: skip
    return dS, dt


# ---- custom ops (what eager autograd, torch.compile and export all see) ----


@torch.library.custom_op("lrmil::child_mse", mutates_args=())
def _child_mse(s: Tensor, t: Tensor, weight: Tensor, with_resid: bool) -> tuple[Tensor, Tensor]:
    return _child_mse_fwd(s, t, weight, with_resid)


@_child_mse.register_fake
def _(s: Tensor, t: Tensor, weight: Tensor, with_resid: bool) -> tuple[Tensor, Tensor]:
    acc = acc_dtype(s.dtype)
    n, _, d = t.shape
    return s.new_empty(n, dtype=acc), s.new_empty((n, d) if with_resid else (0,), dtype=acc)


@torch.library.custom_op("lrmil::child_mse_backward", mutates_args=())
def _child_mse_backward(
    grad: Tensor, s: Tensor, t: Tensor, weight: Tensor, resid: Tensor, s_grad: bool, t_grad: bool
) -> tuple[Tensor, Tensor]:
    return _child_mse_bwd(grad, s, t, weight, resid, s_grad, t_grad)


@_child_mse_backward.register_fake
def _(
    grad: Tensor, s: Tensor, t: Tensor, weight: Tensor, resid: Tensor, s_grad: bool, t_grad: bool
) -> tuple[Tensor, Tensor]:
    ds = resid.new_empty(resid.shape if s_grad else (0,), dtype=s.dtype)
    dt = torch.empty_like(t, memory_format=torch.contiguous_format) if t_grad else t.new_empty(0)
    return ds, dt


def _child_mse_setup(ctx, inputs: tuple, output: tuple[Tensor, Tensor]) -> None:
    s, t, weight, with_resid = inputs
    ctx.s_grad, ctx.t_grad = s.requires_grad and with_resid, t.requires_grad
    # s and t are read again only for the teacher's gradient; ds needs resid alone.
    ctx.save_for_backward(*((s, t) if ctx.t_grad else (None, None)), weight, output[1])
    ctx.s_dtype = s.dtype
    ctx.mark_non_differentiable(output[1])
    # resid gets no gradient: without this, autograd would allocate and zero-fill an (N, D)
    # gradient for it on every backward (as costly as the whole ds computation).
    ctx.set_materialize_grads(False)


def _child_mse_grad(
    ctx, grad_loss: Tensor | None, _grad_resid: Tensor | None
) -> tuple[Tensor | None, ...]:
    if grad_loss is None:  # the loss did not reach the output (grads are not materialised)
        return None, None, None, None
    s, t, weight, resid = ctx.saved_tensors
    if s is None:  # t needs no grad: s and t were not saved and the kernel does not read them
        s = t = resid.new_empty(0, dtype=ctx.s_dtype)
    ds, dt = _child_mse_backward(grad_loss, s, t, weight, resid, ctx.s_grad, ctx.t_grad)
    return (ds if ctx.s_grad else None), (dt if ctx.t_grad else None), None, None


_child_mse.register_autograd(_child_mse_grad, setup_context=_child_mse_setup)


@torch.library.custom_op("lrmil::block_mse", mutates_args=())
def _block_mse(
    S: Tensor,  # noqa: N803
    t: Tensor,
    valid: Tensor,
    r: int,
    with_resid: bool,
) -> tuple[Tensor, Tensor]:
    return _block_mse_fwd(S, t, valid, r, with_resid)


@_block_mse.register_fake
def _(S: Tensor, t: Tensor, valid: Tensor, r: int, with_resid: bool) -> tuple[Tensor, Tensor]:  # noqa: N803
    acc = acc_dtype(S.dtype)
    n, _, _, d = S.shape
    resid = S.new_empty((n, r * r, d) if with_resid else (0,), dtype=acc)
    return S.new_empty(n, dtype=acc), resid


@torch.library.custom_op("lrmil::block_mse_backward", mutates_args=())
def _block_mse_backward(
    grad: Tensor, resid: Tensor, valid: Tensor, g: int, dtype: torch.dtype, t_grad: bool
) -> tuple[Tensor, Tensor]:
    return _block_mse_bwd(grad, resid, valid, g, dtype, t_grad)


@_block_mse_backward.register_fake
def _(
    grad: Tensor, resid: Tensor, valid: Tensor, g: int, dtype: torch.dtype, t_grad: bool
) -> tuple[Tensor, Tensor]:
    n, k, d = resid.shape
    dt = resid.new_empty((n, k, d) if t_grad else (0,), dtype=dtype)
    return resid.new_empty((n, g, g, d), dtype=dtype), dt


def _block_mse_setup(ctx, inputs: tuple, output: tuple[Tensor, Tensor]) -> None:
    S, t, valid, r, with_resid = inputs  # noqa: N806
    # The residuals are all the backward needs: S and t are not saved.
    ctx.g, ctx.dtype, ctx.with_resid = S.shape[1], S.dtype, with_resid
    ctx.S_grad, ctx.t_grad = S.requires_grad, t.requires_grad
    ctx.save_for_backward(valid, output[1])
    ctx.mark_non_differentiable(output[1])
    ctx.set_materialize_grads(False)  # resid gets no gradient (see _child_mse_setup)


def _block_mse_grad(
    ctx, grad_loss: Tensor | None, _grad_resid: Tensor | None
) -> tuple[Tensor | None, ...]:
    if grad_loss is None or not ctx.with_resid:
        return None, None, None, None, None
    valid, resid = ctx.saved_tensors
    dS, dt = _block_mse_backward(grad_loss, resid, valid, ctx.g, ctx.dtype, ctx.t_grad)  # noqa: N806
    return (dS if ctx.S_grad else None), (dt if ctx.t_grad else None), None, None, None


_block_mse.register_autograd(_block_mse_grad, setup_context=_block_mse_setup)


# ---- validation ----


def _check_teacher(op: str, t: Tensor, n: int, k: int, d: int) -> None:
    if tuple(t.shape) != (n, k, d):
        raise ValueError(f"{op}: t must have shape (N, K, D) = {(n, k, d)}, got {tuple(t.shape)}")


# ---- public API ----


def child_mse(s: Tensor, t: Tensor, weight: Tensor) -> Tensor:
    """Weighted child MSE, the per-row L_attn of stage 1.

    Args:
        s: student embeddings, (N, D), float32 / float16 / bfloat16 / float64.
        t: teacher child embeddings, (N, K, D), same dtype as s.
        weight: child weights, (N, K), any float dtype, >= 0. Normalised per row inside; a row
            whose weights sum to 0 (or less) gives loss 0 and zero gradients. Negative weights
            are not checked (that would cost a device sync): they enter the weighted sum as
            they are. Children with weight 0 are never read. No gradient flows to weight.

    Returns:
        (N,) float32 (float64 for float64 inputs):
        `sum_k w_ik / sum_k' w_ik' * mean_d (t_ikd - s_id)^2`. Gradients to s and, when it
        requires grad, to t.
    """
    op = "child_mse"
    check_tensor(op, "s", s, 2, "(N, D)")
    check_tensor(op, "t", t, 3, "(N, K, D)")
    check_tensor(op, "weight", weight, 2, "(N, K)")
    check_float(op, "s", s)
    check_float(op, "t", t, like=("the student s", s))
    if not weight.dtype.is_floating_point:
        raise ValueError(f"{op}: weight must be a float tensor, got {weight.dtype}")
    n, d = s.shape
    if d < 1 or t.shape[1] < 1:
        raise ValueError(f"{op}: D and K must be >= 1, got s {tuple(s.shape)}, t {tuple(t.shape)}")
    _check_teacher(op, t, n, t.shape[1], d)
    if tuple(weight.shape) != tuple(t.shape[:2]):
        raise ValueError(
            f"{op}: weight must have shape (N, K) = {tuple(t.shape[:2])}, got {tuple(weight.shape)}"
        )
    check_same_device(op, s=s, t=t, weight=weight)
    with_resid = torch.is_grad_enabled() and s.requires_grad
    weight = weight.detach().to(acc_dtype(s.dtype))
    return _child_mse(s, t, weight, with_resid)[0]


def block_mse(S: Tensor, t: Tensor, valid: Tensor, r: int) -> Tensor:  # noqa: N803
    """Block-mean MSE of one layer, the per-row L_layer term of stage 1 for layer l.

    Args:
        S: student feature grid, (N, G, G, D), float32 / float16 / bfloat16 / float64.
        t: teacher child embeddings at the same layer, (N, K, D) with K = r*r, same dtype as S.
        valid: (N, K) bool, which children count. Invalid children are never read.
        r: children per side (integer >= 2); G must be a multiple of r. Child k = v*r + u
            covers grid rows v*G/r .. (v+1)*G/r and columns u*G/r .. (u+1)*G/r.

    Returns:
        (N,) float32 (float64 for float64 inputs): the mean over valid children k of
        `mean_d (mean_{block B_k} S_i - t_ik)_d^2`; rows with no valid child give 0. Gradients
        to S and, when it requires grad, to t; for them the forward keeps an (N, K, D) fp32
        residual (fp64 for fp64 inputs) until the backward.
    """
    op = "block_mse"
    check_tensor(op, "S", S, 4, "(N, G, G, D)")
    check_tensor(op, "t", t, 3, "(N, K, D)")
    check_tensor(op, "valid", valid, 2, "(N, K)")
    check_float(op, "S", S)
    check_float(op, "t", t, like=("the student S", S))
    if isinstance(r, bool) or not isinstance(r, int) or r < 2:
        raise ValueError(f"{op}: r must be an integer >= 2, got {r!r}")
    n, g, g2, d = S.shape
    if g != g2 or d < 1:
        raise ValueError(
            f"{op}: S must be a square grid (N, G, G, D) with D >= 1, got {tuple(S.shape)}"
        )
    if g % r != 0:
        raise ValueError(f"{op}: the grid side G = {g} of S is not a multiple of r = {r}")
    _check_teacher(op, t, n, r * r, d)
    if valid.dtype != torch.bool:
        raise ValueError(f"{op}: valid must be a bool tensor, got {valid.dtype}")
    if tuple(valid.shape) != (n, r * r):
        raise ValueError(
            f"{op}: valid must have shape (N, K) = {(n, r * r)}, got {tuple(valid.shape)}"
        )
    check_same_device(op, S=S, t=t, valid=valid)
    if S.is_cuda and S.stride(3) != 1 and d > 1:
        # A CNN's NCHW grid seen as NHWC: the GPU kernels' threads run along D, so they read
        # a contiguous copy (coalesced) instead of one element per 32-byte sector.
        S = S.contiguous()  # noqa: N806
    with_resid = torch.is_grad_enabled() and (S.requires_grad or t.requires_grad)
    return _block_mse(S, t, valid, r, with_resid)[0]


class AlignmentLoss(nn.Module):
    """Stage-1 loss `L_stage1 = mean_i (lambda_layer * L_layer(i) + lambda_attn * L_attn(i))`.

    L_attn(i) is `child_mse` of the final embeddings with weights `attn * valid`, uniform over
    the valid children where no attention is given or a row's weights sum to 0.
    L_layer(i) is the mean over layers of `block_mse(grid_l, t_l, valid, r)`; with no layers
    (the `adapter` mode) the term is left out.
    """

    def __init__(self, r: int = 4, lambda_attn: float = 1.0, lambda_layer: float = 1.0):
        super().__init__()
        if isinstance(r, bool) or not isinstance(r, int) or r < 2:
            raise ValueError(f"AlignmentLoss: r must be an integer >= 2, got {r!r}")
        self.r, self.lambda_attn, self.lambda_layer = r, float(lambda_attn), float(lambda_layer)

    def extra_repr(self) -> str:
        return f"r={self.r}, lambda_attn={self.lambda_attn}, lambda_layer={self.lambda_layer}"

    def forward(
        self,
        s: Tensor,
        t: Tensor,
        valid: Tensor,
        attn: Tensor | None = None,
        grids: Sequence[Tensor] = (),
        t_layers: Sequence[Tensor] = (),
    ) -> Tensor:
        """
        Args:
            s: student final embeddings (N, D); t: teacher child embeddings (N, K, D).
            valid: (N, K) bool. attn: teacher attention weights (N, K), >= 0, or None.
            grids: student grids per layer, each (N, G_l, G_l, D_l).
            t_layers: teacher child embeddings per layer, each (N, K, D_l).

        Returns: the scalar loss (float32; float64 for float64 inputs).
        """
        if len(grids) != len(t_layers):
            raise ValueError(
                f"AlignmentLoss: got {len(grids)} student grids but {len(t_layers)} teacher layers"
            )
        if not isinstance(valid, Tensor) or valid.dtype != torch.bool:
            raise ValueError("AlignmentLoss: valid must be a bool tensor (N, K)")
        acc = acc_dtype(s.dtype)
        mask = valid.to(acc)
        if attn is None:
            weight = mask
        else:
            if tuple(attn.shape) != tuple(valid.shape):
                raise ValueError(
                    f"AlignmentLoss: attn must have shape (N, K) = {tuple(valid.shape)}, "
                    f"got {tuple(attn.shape)}"
                )
            weight = attn.detach().to(acc) * mask
            weight = torch.where(weight.sum(1, keepdim=True) > 0, weight, mask)
        loss = self.lambda_attn * child_mse(s, t, weight)
        if grids:
            layers = [
                block_mse(g, tl, valid, self.r) for g, tl in zip(grids, t_layers, strict=True)
            ]
            loss = loss + self.lambda_layer * torch.stack(layers).mean(0)
        return loss.mean()
