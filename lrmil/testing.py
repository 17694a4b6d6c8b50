"""Helpers for tests of numerical code: comparisons that say where and how much they fail."""

from __future__ import annotations

import torch


def assert_close_report(
    actual: torch.Tensor,
    expected: torch.Tensor,
    *,
    rtol: float = 1e-5,
    atol: float = 1e-6,
    name: str = "tensor",
) -> None:
    """Assert |actual - expected| <= atol + rtol * |expected| elementwise (NaNs must match).

    On failure the message names the worst element (index, both values, its error and the
    allowed error) and how many elements fail, instead of a bare "not close".
    """
    if actual.shape != expected.shape:
        raise AssertionError(
            f"{name}: shape {tuple(actual.shape)} != expected {tuple(expected.shape)}"
        )
    a = actual.detach().to("cpu", torch.float64)
    e = expected.detach().to("cpu", torch.float64)
    nan_mismatch = a.isnan() != e.isnan()
    if bool(nan_mismatch.any()):
        index = tuple(torch.nonzero(nan_mismatch)[0].tolist())
        raise AssertionError(f"{name}: NaN mismatch at {index}: {a[index]} vs {e[index]}")
    both = ~a.isnan()
    same_inf = (a == e) & a.isinf()
    err = torch.where(both & ~same_inf, (a - e).abs(), torch.zeros_like(a)).nan_to_num(posinf=1e300)
    allowed = atol + rtol * e.abs().nan_to_num(posinf=1e300)
    excess = err - allowed
    if a.numel() == 0 or bool((excess <= 0).all()):
        return
    flat = int(torch.argmax(excess))
    index = tuple(int(i) for i in torch.unravel_index(torch.tensor(flat), a.shape))
    n_bad = int((excess > 0).sum())
    raise AssertionError(
        f"{name}: {n_bad} of {a.numel()} elements differ; worst at {index}: "
        f"actual {a[index].item():.9g}, expected {e[index].item():.9g}, "
        f"error {err[index].item():.3g} > allowed {allowed[index].item():.3g} "
        f"(rtol={rtol}, atol={atol}); max abs error {err.max().item():.3g}"
    )


def max_abs_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """Largest |actual - expected|, computed in float64 on the CPU."""
    a = actual.detach().to("cpu", torch.float64)
    return float((a - expected.detach().to("cpu", torch.float64)).abs().max()) if a.numel() else 0.0


def attention_pool_inputs(
    lengths: list[int],
    dim: int,
    *,
    hidden: int = 16,
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
    w_scale: float = 1.0,
) -> tuple[torch.Tensor, ...]:
    """Random (proj, x, w, b_w, offsets) for `gated_attention_pool`, bags of the given lengths.

    Drawn in float64 from a seeded generator then cast, so every dtype sees the same values.
    """
    gen = torch.Generator().manual_seed(seed)
    n_rows = sum(lengths)
    proj = torch.randn(n_rows, 2 * hidden, generator=gen, dtype=torch.float64) * 2
    x = torch.randn(n_rows, dim, generator=gen, dtype=torch.float64)
    w = torch.randn(hidden, generator=gen, dtype=torch.float64) * w_scale
    b_w = torch.randn((), generator=gen, dtype=torch.float64)
    offsets = torch.tensor([0, *lengths]).cumsum(0)
    return proj.to(dtype), x.to(dtype), w.to(dtype), b_w.to(dtype), offsets


def run_with_grads(fn, *inputs, cast: torch.dtype | None = None, seed: int = 1):
    """(outputs, input gradients) of `fn(*float_inputs, *rest)`, backpropagating fixed random
    gradients into every output. The floating-point inputs (cast to `cast` if given) are the
    leaves; the others (e.g. offsets) are passed as they are."""
    leaves = [
        t.detach().to(cast or t.dtype).requires_grad_() if t.is_floating_point() else t
        for t in inputs
    ]
    outs = fn(*leaves)
    gen = torch.Generator().manual_seed(seed)
    grads = [torch.randn(o.shape, generator=gen, dtype=torch.float64).to(o) for o in outs]
    torch.autograd.backward(outs, grads)
    return [o.detach() for o in outs], [t.grad for t in leaves if t.is_floating_point()]
