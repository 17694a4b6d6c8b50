"""Pure-PyTorch references of the fused ops: the definitions the kernels must match.

They are differentiable with ordinary autograd, run on any device and export to ONNX, but store
every intermediate: use the fused ops in lrmil.ops for speed and memory.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def gate_logits(proj: torch.Tensor, w: torch.Tensor, b_w: torch.Tensor) -> torch.Tensor:
    """Attention logits `e = (tanh(proj[:, :L]) * sigmoid(proj[:, L:])) @ w + b_w`, shape (T,)."""
    hidden = w.shape[0]
    gate = torch.tanh(proj[:, :hidden]) * torch.sigmoid(proj[:, hidden:])
    return gate @ w + b_w


def gated_attention_pool(
    proj: torch.Tensor,
    x: torch.Tensor,
    w: torch.Tensor,
    b_w: torch.Tensor,
    offsets: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Reference of `lrmil.ops.gated_attention_pool` (same shapes and semantics).

    Vectorised over the packed bags with segment reductions (no Python loop over bags), so it
    also serves as the export path. Computes in float32 (float64 for float64 inputs); returns
    pooled in x's dtype, attn and logits in the computation dtype. Empty bags pool to zeros.
    """
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    offsets = offsets.to(torch.int64)
    n_bags = offsets.shape[0] - 1
    # Bag index of each instance: count the bag starts at or before it. (repeat_interleave
    # with tensor repeats exports to ONNX graphs that give wrong indices under ONNX Runtime.)
    starts = offsets[1:-1].clamp(max=x.shape[0])  # trailing empty bags start at T
    marks = torch.zeros(x.shape[0] + 1, dtype=torch.int64, device=x.device)
    marks = marks.index_add(0, starts, torch.ones_like(starts))
    bag_of = marks[: x.shape[0]].cumsum(0)
    logits = gate_logits(proj.to(acc), w.to(acc), b_w.to(acc))
    # Max-subtracted softmax per bag; a bag whose logits are all -inf gets zero weights.
    bag_max = torch.full((n_bags,), float("-inf"), dtype=acc, device=x.device)
    bag_max = bag_max.scatter_reduce(0, bag_of, logits, reduce="amax", include_self=True)
    bag_max = torch.where(torch.isfinite(bag_max), bag_max, torch.zeros_like(bag_max))
    unnorm = torch.exp(logits - bag_max[bag_of])
    bag_sum = torch.zeros(n_bags, dtype=acc, device=x.device).index_add(0, bag_of, unnorm)
    inv_sum = torch.where(bag_sum > 0, 1.0 / bag_sum, torch.zeros_like(bag_sum))
    attn = unnorm * inv_sum[bag_of]
    pooled = torch.zeros(n_bags, x.shape[1], dtype=acc, device=x.device)
    pooled = pooled.index_add(0, bag_of, attn[:, None] * x.to(acc))
    return pooled.to(x.dtype), attn, logits


def gated_attention_pool_padded(
    proj: torch.Tensor,
    x: torch.Tensor,
    w: torch.Tensor,
    b_w: torch.Tensor,
    offsets: torch.Tensor,
    longest: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The usual batched formulation: gather the bags into a padded (B, M, D) batch with a
    mask, softmax, batched matmul. A baseline for the benchmarks.

    `longest` (M, the longest bag) is read from offsets when not given; a data loader knows it,
    and passing it keeps the function free of data-dependent shapes (torch.compile). Same
    results as `gated_attention_pool` for fp32 inputs.
    """
    offsets = offsets.to(torch.int64)
    n_rows, n_bags = x.shape[0], offsets.shape[0] - 1
    starts, lengths = offsets[:-1], offsets[1:] - offsets[:-1]
    if longest is None:
        longest = int(lengths.max()) if n_bags else 0
    logits = gate_logits(proj, w, b_w)
    if n_rows == 0:
        return x.new_zeros(n_bags, x.shape[1]), logits.new_zeros(0), logits
    positions = torch.arange(longest, device=x.device)
    mask = positions[None, :] < lengths[:, None]
    rows = (starts[:, None] + positions[None, :]).clamp(max=n_rows - 1)
    padded_logits = logits[rows].masked_fill(~mask, float("-inf"))
    padded_x = x[rows] * mask[..., None].to(x.dtype)
    attn = torch.softmax(padded_logits, dim=1).nan_to_num(0.0)  # empty bags: all -inf
    pooled = torch.bmm(attn[:, None, :].to(x.dtype), padded_x)[:, 0]
    # Row t of the packed batch sits at (its bag, t - the bag's start) of the padded one.
    packed = torch.arange(n_rows, device=x.device)
    bag_of = torch.searchsorted(offsets, packed, right=True) - 1
    return pooled, attn[bag_of, packed - starts[bag_of]], logits


def gated_attention_pool_loop(
    proj: torch.Tensor,
    x: torch.Tensor,
    w: torch.Tensor,
    b_w: torch.Tensor,
    offsets: torch.Tensor,
    bounds: Sequence[int] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """CLAM-style: one bag at a time in a Python loop. A baseline for the benchmarks.

    `bounds` are the offsets as Python ints (read from offsets when not given); torch.compile
    then unrolls the loop for them.
    """
    bounds = offsets.tolist() if bounds is None else bounds
    pooled, attns, logits = [], [], []
    for start, end in zip(bounds[:-1], bounds[1:], strict=True):
        e = gate_logits(proj[start:end], w, b_w)
        a = torch.softmax(e, dim=0)
        pooled.append(a @ x[start:end] if end > start else x.new_zeros(x.shape[1]))
        attns.append(a)
        logits.append(e)
    empty = x.new_zeros(0)
    return (
        torch.stack(pooled) if pooled else x.new_zeros(0, x.shape[1]),
        torch.cat(attns) if attns else empty,
        torch.cat(logits) if logits else empty,
    )


def _acc_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def child_mse(s: torch.Tensor, t: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Reference of `lrmil.ops.child_mse`: `sum_k w_ik mean_d (t_ikd - s_id)^2`, shape (N,).

    Weights are normalised per row; a row whose weights sum to 0 gives 0. Computes in float32
    (float64 for float64 inputs).
    """
    acc = _acc_dtype(s)
    weight = weight.to(acc)
    total = weight.sum(1, keepdim=True)
    norm = torch.where(total > 0, weight / total.clamp_min(torch.finfo(acc).tiny), 0.0)
    per_child = (t.to(acc) - s.to(acc)[:, None, :]).square().mean(2)
    return (norm * per_child).sum(1)


def block_means(grid: torch.Tensor, r: int) -> torch.Tensor:
    """Means of the r x r blocks of `grid (N, G, G, D)` as `(N, r*r, D)`, child k = v*r + u."""
    n, g, _, d = grid.shape
    b = g // r
    return grid.reshape(n, r, b, r, b, d).mean(dim=(2, 4)).reshape(n, r * r, d)


def block_mse(S: torch.Tensor, t: torch.Tensor, valid: torch.Tensor, r: int) -> torch.Tensor:  # noqa: N803
    """Reference of `lrmil.ops.block_mse`: mean over valid children k of
    `mean_d (mean_{block B_k} S_i - t_ik)_d^2`, shape (N,); rows with no valid child give 0."""
    acc = _acc_dtype(S)
    per_child = (block_means(S.to(acc), r) - t.to(acc)).square().mean(2)
    mask = valid.to(acc)
    count = mask.sum(1)
    return torch.where(count > 0, (per_child * mask).sum(1) / count.clamp_min(1.0), 0.0)


def alignment_loss(
    s: torch.Tensor,
    t: torch.Tensor,
    valid: torch.Tensor,
    grids: list[torch.Tensor] | None = None,
    t_layers: list[torch.Tensor] | None = None,
    attn: torch.Tensor | None = None,
    *,
    r: int = 4,
    lambda_attn: float = 1.0,
    lambda_layer: float = 1.0,
) -> torch.Tensor:
    """Reference of `lrmil.ops.AlignmentLoss` (method.md, stage 1): a scalar
    `mean_i (lambda_layer * mean_l block_mse(S^l, t^l, valid) + lambda_attn * child_mse(s, t, w))`
    with `w = attn * valid`, or uniform over the valid children where attn is None or sums to 0.
    """
    acc = _acc_dtype(s)
    mask = valid.to(acc)
    weight = mask if attn is None else attn.to(acc) * mask
    uniform = weight.sum(1, keepdim=True) <= 0
    weight = torch.where(uniform, mask, weight)
    loss = lambda_attn * child_mse(s, t, weight)
    if grids:
        pairs = zip(grids, t_layers, strict=True)
        layer = torch.stack([block_mse(g, tl, valid, r) for g, tl in pairs])
        loss = loss + lambda_layer * layer.mean(0)
    return loss.mean()
