"""The fused alignment loss (child_mse, block_mse, AlignmentLoss) against its reference."""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from lrmil.ops import AlignmentLoss, block_mse, child_mse
from lrmil.ops import reference as ref


def _rand(*shape, dtype=torch.float32, seed=0, grad=False):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*shape, generator=g, dtype=torch.float64).to(dtype)
    return x.requires_grad_(grad)


def _weights(n, k, seed=1):
    w = torch.rand(n, k, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    w[w < 0.25] = 0.0  # some masked children
    return w.float()


def _valid(n, k, seed=2):
    return torch.rand(n, k, generator=torch.Generator().manual_seed(seed)) > 0.3


def _grads(loss, inputs, seed=3):
    """Gradients of a random weighting of the per-row losses (so each row's scale matters),
    or of their sum when seed is None."""
    if seed is None:
        return torch.autograd.grad(loss.sum(), inputs)
    upstream = torch.rand(loss.shape, generator=torch.Generator().manual_seed(seed)).to(loss.dtype)
    return torch.autograd.grad((loss * upstream).sum(), inputs)


# ---- hand-computed values ----


def test_child_mse_hand_computed():
    s = torch.tensor([[0.0, 0.0], [1.0, 2.0]])
    t = torch.tensor([[[1.0, 1.0], [3.0, 3.0]], [[1.0, 0.0], [5.0, 5.0]]])
    w = torch.tensor([[1.0, 3.0], [2.0, 0.0]])
    # Row 0: (1 * 1 + 3 * 9) / 4 = 7. Row 1: only child 0, mean((0, -2)^2) = 2.
    torch.testing.assert_close(child_mse(s, t, w), torch.tensor([7.0, 2.0]))


def test_block_mse_hand_computed():
    # G = 4, r = 2: child k = v*2 + u is the 2x2 block at rows 2v.., columns 2u...
    grid = torch.arange(16.0).reshape(1, 4, 4, 1)
    means = torch.tensor([2.5, 4.5, 10.5, 12.5])  # block means of 0..15 laid out 4x4
    t = (means + torch.tensor([0.0, 1.0, 2.0, 3.0])).reshape(1, 4, 1)
    valid = torch.tensor([[True, True, True, False]])
    torch.testing.assert_close(block_mse(grid, t, valid, 2), torch.tensor([(0 + 1 + 4) / 3]))


def test_zero_weight_rows_give_zero_loss_and_grads():
    s, t = _rand(3, 5, grad=True), _rand(3, 4, 5, seed=1, grad=True)
    w = torch.rand(3, 4)
    w[1] = 0.0
    loss = child_mse(s, t, w)
    assert loss[1] == 0 and loss[0] > 0 and loss[2] > 0
    ds, dt = _grads(loss, (s, t))
    assert torch.all(ds[1] == 0) and torch.all(dt[1] == 0)
    assert torch.all(ds[0] != 0)


def test_all_invalid_rows_give_zero_loss_and_grads():
    grid, t = _rand(3, 4, 4, 6, grad=True), _rand(3, 4, 6, seed=1, grad=True)
    valid = torch.ones(3, 4, dtype=torch.bool)
    valid[2] = False
    valid[0, 1] = False
    loss = block_mse(grid, t, valid, 2)
    assert loss[2] == 0 and loss[0] > 0
    dS, dt = _grads(loss, (grid, t))  # noqa: N806
    assert torch.all(dS[2] == 0) and torch.all(dt[2] == 0)
    assert torch.all(dS[0, :2, 2:] == 0) and torch.all(dt[0, 1] == 0)  # the invalid child
    assert torch.all(dS[0, :2, :2] != 0)


def test_masked_children_are_not_read():
    """Children with weight 0 / invalid may hold garbage (padding) without poisoning the row."""
    s, t = _rand(2, 3), _rand(2, 4, 3, seed=1)
    w = torch.ones(2, 4)
    w[:, 3] = 0
    t[:, 3] = float("nan")
    assert torch.isfinite(child_mse(s, t, w)).all()
    valid = w.bool()
    assert torch.isfinite(block_mse(_rand(2, 4, 4, 3), t, valid, 2)).all()


# ---- against the reference: shapes, gradients ----


@pytest.mark.parametrize("d", [1, 3, 127, 768, 1032])
@pytest.mark.parametrize("k", [4, 16])
def test_child_mse_matches_reference(d, k):
    s, t = _rand(5, d, grad=True), _rand(5, k, d, seed=1, grad=True)
    w = _weights(5, k)
    w[3] = 0
    loss = child_mse(s, t, w)
    expect = ref.child_mse(s, t, w)
    torch.testing.assert_close(loss, expect, rtol=1e-5, atol=1e-6)
    for got, want in zip(_grads(loss, (s, t)), _grads(expect, (s, t)), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("d", [1, 3, 127, 768, 1032])
@pytest.mark.parametrize(("g", "r"), [(4, 2), (8, 2), (8, 4), (16, 4)])
def test_block_mse_matches_reference(d, g, r):
    grid, t = _rand(3, g, g, d, grad=True), _rand(3, r * r, d, seed=1, grad=True)
    valid = _valid(3, r * r)
    valid[1] = False
    loss = block_mse(grid, t, valid, r)
    expect = ref.block_mse(grid, t, valid, r)
    torch.testing.assert_close(loss, expect, rtol=1e-5, atol=1e-6)
    for got, want in zip(_grads(loss, (grid, t)), _grads(expect, (grid, t)), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)


def test_gradcheck_float64():
    s, t = (
        _rand(3, 5, dtype=torch.float64, grad=True),
        _rand(3, 4, 5, dtype=torch.float64, grad=True),
    )
    w = _weights(3, 4).double()
    w[2] = 0
    assert torch.autograd.gradcheck(lambda s, t: child_mse(s, t, w), (s, t))
    assert torch.autograd.gradcheck(lambda s: child_mse(s, t.detach(), w), (s,))
    grid = _rand(3, 4, 4, 5, dtype=torch.float64, grad=True)
    valid = _valid(3, 4)
    assert torch.autograd.gradcheck(lambda g, t: block_mse(g, t, valid, 2), (grid, t))
    assert torch.autograd.gradcheck(lambda g: block_mse(g, t.detach(), valid, 2), (grid,))


def test_only_the_inputs_that_require_grad_get_one():
    s, t = _rand(2, 3, grad=True), _rand(2, 4, 3)
    child_mse(s, t, torch.ones(2, 4)).sum().backward()
    assert s.grad is not None and t.grad is None
    s, t = _rand(2, 3), _rand(2, 4, 3, grad=True)
    loss = child_mse(s, t, torch.ones(2, 4))
    (got,) = _grads(loss, (t,))
    torch.testing.assert_close(got, _grads(ref.child_mse(s, t, torch.ones(2, 4)), (t,))[0])


def test_non_contiguous_inputs():
    """Slices and permutations out of larger buffers, including a non-unit feature stride."""
    n, k, d, g, r = 4, 16, 9, 8, 4
    s_big = _rand(n, 2 * d, grad=True)
    t_big = _rand(k, n, d, seed=1, grad=True)
    w_big = _weights(n, 2 * k)
    s, t, w = s_big[:, ::2], t_big.transpose(0, 1), w_big[:, 1::2]
    assert not (s.is_contiguous() or t.is_contiguous() or w.is_contiguous())
    loss = child_mse(s, t, w)
    expect = ref.child_mse(s.contiguous(), t.contiguous(), w.contiguous())
    torch.testing.assert_close(loss, expect)
    for got, want in zip(_grads(loss, (s_big, t_big)), _grads(expect, (s_big, t_big)), strict=True):
        torch.testing.assert_close(got, want)

    grid_big = _rand(g, n, g, d + 2, seed=4, grad=True)
    grid = grid_big.permute(1, 2, 0, 3)[..., 1:-1]  # (N, G, G, D), columns and rows swapped
    valid = _valid(k, n).t()
    loss = block_mse(grid, t, valid, r)
    expect = ref.block_mse(grid.contiguous(), t.contiguous(), valid.contiguous(), r)
    torch.testing.assert_close(loss, expect)
    for got, want in zip(
        _grads(loss, (grid_big, t_big)), _grads(expect, (grid_big, t_big)), strict=True
    ):
        torch.testing.assert_close(got, want)


@pytest.mark.parametrize("t_grad", [False, True])
def test_whole_row_tasks(t_grad):
    """From 64 rows on, CPU tasks take whole rows (here D = 1100: a 1024-feature chunk and a
    tail) in blocks of N / 32 rows; children with weight 0 are skipped; block_mse's chunks
    shrink with r (r = 8: 512 features, r = 16: 256)."""
    n, k, d = 70, 7, 1100
    s, t = _rand(n, d, grad=True), _rand(n, k, d, seed=1, grad=t_grad)
    w = _weights(n, k)
    w[5] = 0
    inputs = (s, t) if t_grad else (s,)
    loss, expect = child_mse(s, t, w), ref.child_mse(s, t, w)
    torch.testing.assert_close(loss, expect, rtol=1e-5, atol=1e-6)
    for got, want in zip(_grads(loss, inputs), _grads(expect, inputs), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)
    for r in (8, 16):
        grid, tl = _rand(64, 16, 16, 600, seed=2, grad=True), _rand(64, r * r, 600, seed=3)
        tl.requires_grad_(t_grad)
        valid = _valid(64, r * r)
        inputs = (grid, tl) if t_grad else (grid,)
        loss, expect = block_mse(grid, tl, valid, r), ref.block_mse(grid, tl, valid, r)
        torch.testing.assert_close(loss, expect, rtol=1e-5, atol=1e-6)
        for got, want in zip(_grads(loss, inputs), _grads(expect, inputs), strict=True):
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize(("n", "g"), [(1030, 4), (300, 8)])
def test_row_blocks_with_a_shorter_last_block(n, g):
    """Row blocks of up to 32 (child_mse) and 8 (block_mse) rows, the last one shorter."""
    s, t = _rand(n, 40, grad=True), _rand(n, 4, 40, seed=1)
    w = _weights(n, 4)
    w[n - 3] = 0
    loss, expect = child_mse(s, t, w), ref.child_mse(s, t, w)
    torch.testing.assert_close(loss, expect, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(_grads(loss, (s,))[0], _grads(expect, (s,))[0], rtol=1e-5, atol=1e-7)
    grid, valid = _rand(n, g, g, 40, seed=2, grad=True), _valid(n, 4)
    loss, expect = block_mse(grid, t, valid, 2), ref.block_mse(grid, t, valid, 2)
    torch.testing.assert_close(loss, expect, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(
        _grads(loss, (grid,))[0], _grads(expect, (grid,))[0], rtol=1e-5, atol=1e-7
    )


def _saved_sizes(fn) -> list[tuple[int, ...]]:
    """Shapes of the tensors autograd saves while fn() runs."""
    sizes = []

    def pack(x):
        sizes.append(tuple(x.shape))
        return x

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x):
        fn()
    return sizes


def test_backward_reads_only_the_residuals():
    """With the teacher frozen, the forward saves the residual (child_mse: s - tbar (N, D);
    block_mse: block means - t (N, K, D)) and the backward reads nothing else: s, S and t may be
    overwritten in between (NaN here) without changing the gradients."""
    n, k, d = 6, 4, 10
    s, t, w = _rand(n, d, grad=True), _rand(n, k, d, seed=1), _weights(n, k)
    grid, valid = _rand(n, 4, 4, d, seed=2, grad=True), _valid(n, k)
    want = _grads(ref.child_mse(s, t, w) + ref.block_mse(grid, t, valid, 2), (s, grid))
    assert sorted(_saved_sizes(lambda: child_mse(s, t, w))) == [(n, k), (n, d)]
    assert sorted(_saved_sizes(lambda: block_mse(grid, t, valid, 2))) == [(n, k), (n, k, d)]
    loss = child_mse(s, t, w) + block_mse(grid, t, valid, 2)
    with torch.no_grad():
        for x in (s, t, grid):
            x.fill_(float("nan"))
    for got, exp in zip(_grads(loss, (s, grid)), want, strict=True):
        torch.testing.assert_close(got, exp, rtol=1e-5, atol=1e-7)


def test_teacher_gradient_without_student_gradient():
    """t requires grad and s / S do not: the forward saves s and t for child_mse's dt (and the
    residual for block_mse's), and no gradient is made for the student."""
    s, t, w = _rand(5, 7), _rand(5, 4, 7, seed=1, grad=True), _weights(5, 4)
    grid, valid = _rand(5, 4, 4, 7, seed=2), _valid(5, 4)
    loss = child_mse(s, t, w) + block_mse(grid, t, valid, 2)
    expect = ref.child_mse(s, t, w) + ref.block_mse(grid, t, valid, 2)
    torch.testing.assert_close(_grads(loss, (t,))[0], _grads(expect, (t,))[0])


# ---- low precision: flash-attention's rule ----


def _child_mse_native(s, t, w):
    """The reference formula evaluated in the inputs' own precision (no upcast)."""
    w = (w / w.sum(1, keepdim=True)).to(s.dtype)
    return (w * (t - s[:, None]).square().mean(2)).sum(1)


def _block_mse_native(grid, t, valid, r):
    per_child = (ref.block_means(grid, r) - t).square().mean(2)
    mask = valid.to(grid.dtype)
    return (per_child * mask).sum(1) / mask.sum(1)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("op", ["child", "block"])
def test_low_precision_within_twice_reference_error(dtype, op):
    n, k, d, g, r = 16, 16, 200, 8, 4
    s, t = _rand(n, d, dtype=dtype, grad=True), _rand(n, k, d, dtype=dtype, seed=1, grad=True)
    if op == "child":
        w = _weights(n, k) + 0.01
        first, args = s, (t, w)
        fused, native, exact = child_mse, _child_mse_native, ref.child_mse
    else:
        first = _rand(n, g, g, d, dtype=dtype, seed=2, grad=True)
        args = (t, torch.ones(n, k, dtype=torch.bool), r)
        fused, native, exact = block_mse, _block_mse_native, ref.block_mse
    as64 = [first.detach().double().requires_grad_(), t.detach().double().requires_grad_()]
    truth = exact(as64[0], as64[1], *args[1:])
    truth_grads = _grads(truth, as64)
    for got_fn in (fused, native):  # kernel first, then the low-precision baseline
        loss = got_fn(first, *args)
        grads = _grads(loss, (first, t))
        errs = [(loss.double() - truth).abs().max()]
        errs += [(gr.double() - tg).abs().max() for gr, tg in zip(grads, truth_grads, strict=True)]
        if got_fn is fused:
            kernel_errs = errs
            assert loss.dtype == torch.float32
    for what, kernel, base in zip(
        ("loss", "grad student", "grad teacher"), kernel_errs, errs, strict=True
    ):
        assert kernel <= 2 * base + 1e-5, (
            f"{op} {dtype} {what}: {kernel:.3g} vs reference {base:.3g}"
        )


# ---- determinism, custom-op plumbing, compile ----


def test_deterministic_on_cpu():
    s, t = _rand(64, 300, grad=True), _rand(64, 16, 300, seed=1, grad=True)
    grid, w, valid = _rand(64, 8, 8, 300, seed=2, grad=True), _weights(64, 16), _valid(64, 16)

    def run():
        a = child_mse(s, t, w)
        b = block_mse(grid, t, valid, 4)
        return (a, b, *_grads(a + b, (s, t, grid)))

    for first, second in zip(run(), run(), strict=True):
        assert torch.equal(first, second)


def test_same_bits_whatever_the_thread_count():
    s, t = _rand(8, 700, grad=True), _rand(8, 16, 700, seed=1)
    grid, w, valid = _rand(8, 8, 8, 700, seed=2, grad=True), _weights(8, 16), _valid(8, 16)
    threads = torch.get_num_threads()

    def run(n_threads):
        torch.set_num_threads(n_threads)
        try:
            loss = child_mse(s, t, w) + block_mse(grid, t, valid, 4)
            return (loss, *_grads(loss, (s, grid)))
        finally:
            torch.set_num_threads(threads)

    for one, two in zip(run(1), run(2), strict=True):
        assert torch.equal(one, two)


@pytest.mark.parametrize("t_grad", [False, True])
def test_opcheck(t_grad):
    s, t = _rand(3, 5, grad=True), _rand(3, 4, 5, seed=1, grad=t_grad)
    grid = _rand(3, 4, 4, 5, seed=2, grad=True)
    for with_resid in (False, True):
        args = (s, t, _weights(3, 4), with_resid)
        torch.library.opcheck(torch.ops.lrmil.child_mse.default, args)
        args = (grid, t, _valid(3, 4), 2, with_resid)
        torch.library.opcheck(torch.ops.lrmil.block_mse.default, args)


@pytest.mark.parametrize("t_grad", [False, True])
def test_custom_op_autograd_matches_eager(t_grad):
    """torch.compile and export see the custom ops with their registered autograd; eager calls
    go through a thin autograd.Function: both give the same values and gradients."""
    s, t = _rand(6, 40, grad=True), _rand(6, 4, 40, seed=1, grad=t_grad)
    w = _weights(6, 4)
    grid, valid = _rand(6, 4, 4, 40, seed=2, grad=True), _valid(6, 4)
    inputs = (s, grid, t) if t_grad else (s, grid)
    eager = child_mse(s, t, w) + block_mse(grid, t, valid, 2)
    child_op, block_op = torch.ops.lrmil.child_mse.default, torch.ops.lrmil.block_mse.default
    via_ops = child_op(s, t, w, True)[0] + block_op(grid, t, valid, 2, True)[0]
    torch.testing.assert_close(via_ops, eager, rtol=0, atol=0)
    for got, want in zip(_grads(via_ops, inputs), _grads(eager, inputs), strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=0)


class _Losses(torch.nn.Module):
    def forward(self, s, t, w, grid, valid):
        return child_mse(s, t, w) + block_mse(grid, t, valid, 2)


def test_export_sees_the_custom_ops():
    args = (_rand(3, 5), _rand(3, 4, 5, seed=1), _weights(3, 4), _rand(3, 4, 4, 5), _valid(3, 4))
    program = torch.export.export(_Losses(), args)
    targets = {str(node.target) for node in program.graph.nodes}
    assert {"lrmil.child_mse.default", "lrmil.block_mse.default"} <= targets
    torch.testing.assert_close(program.module()(*args), _Losses()(*args))


class _RecordOps(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(str(func))
        return func(*args, **(kwargs or {}))


def test_backward_allocates_no_gradient_for_the_residuals():
    """The saved residuals (child_mse (N, D), block_mse (N, K, D)) are outputs of the custom ops
    but get no gradient: autograd must not zero-fill a gradient for them on every backward."""
    s, t, w = _rand(5, 30, grad=True), _rand(5, 4, 30, seed=1), _weights(5, 4)
    grid, valid = _rand(5, 4, 4, 30, seed=2, grad=True), _valid(5, 4)
    loss = torch.ops.lrmil.child_mse.default(s, t, w, True)[0].sum()
    loss = loss + torch.ops.lrmil.block_mse.default(grid, t, valid, 2, True)[0].sum()
    with _RecordOps() as recorded:
        ds, dS = torch.autograd.grad(loss, (s, grid))  # noqa: N806
    assert not [op for op in recorded.ops if "zero" in op or "fill" in op], recorded.ops
    torch.testing.assert_close(ds, _grads(ref.child_mse(s, t, w), (s,), seed=None)[0])
    torch.testing.assert_close(dS, _grads(ref.block_mse(grid, t, valid, 2), (grid,), seed=None)[0])


def test_double_backward_is_refused():
    """The kernels' gradients are not differentiable: an error, not a silently wrong result."""
    s, t, w = _rand(3, 5, grad=True), _rand(3, 4, 5, seed=1), _weights(3, 4)
    scale = torch.ones(3, requires_grad=True)  # makes the upstream gradient itself differentiable
    (ds,) = torch.autograd.grad((child_mse(s, t, w) * scale).sum(), s, create_graph=True)
    with pytest.raises(RuntimeError, match="no autograd formula"):
        ds.sum().backward()


def test_torch_compile_smoke():
    loss_fn = AlignmentLoss(r=2, lambda_attn=0.5, lambda_layer=2.0)
    s, t = _rand(4, 6, grad=True), _rand(4, 4, 6, seed=1)
    grid, valid, attn = _rand(4, 4, 4, 6, seed=2, grad=True), _valid(4, 4), _weights(4, 4)
    compiled = torch.compile(loss_fn, backend="aot_eager", fullgraph=True)
    got = compiled(s, t, valid, attn, [grid], [t])
    want = loss_fn(s, t, valid, attn, [grid], [t])
    torch.testing.assert_close(got, want)
    for a, b in zip(
        torch.autograd.grad(got, (s, grid)), torch.autograd.grad(want, (s, grid)), strict=True
    ):
        torch.testing.assert_close(a, b)


# ---- AlignmentLoss ----


@pytest.mark.parametrize("attn_kind", ["none", "given", "zero_rows"])
def test_alignment_loss_matches_reference(attn_kind):
    n, k, d, r = 6, 16, 10, 4
    s, t = _rand(n, d, grad=True), _rand(n, k, d, seed=1)
    valid = _valid(n, k)
    valid[4] = False
    grids = [_rand(n, 8, 8, d, seed=5, grad=True), _rand(n, 4, 4, 3, seed=6, grad=True)]
    t_layers = [_rand(n, k, d, seed=7), _rand(n, k, 3, seed=8)]
    attn = None if attn_kind == "none" else _weights(n, k)
    if attn_kind == "zero_rows":
        attn[:3] = 0  # these rows fall back to uniform weights over the valid children
    module = AlignmentLoss(r=r, lambda_attn=0.7, lambda_layer=1.3)
    got = module(s, t, valid, attn, grids, t_layers)
    want = ref.alignment_loss(
        s, t, valid, grids, t_layers, attn, r=r, lambda_attn=0.7, lambda_layer=1.3
    )
    torch.testing.assert_close(got, want)
    inputs = (s, *grids)
    for a, b in zip(
        torch.autograd.grad(got, inputs), torch.autograd.grad(want, inputs), strict=True
    ):
        torch.testing.assert_close(a, b)


def test_alignment_loss_uniform_fallback_equals_no_attention():
    s, t, valid = _rand(3, 4), _rand(3, 4, 4, seed=1), _valid(3, 4)
    module = AlignmentLoss(r=2)
    torch.testing.assert_close(module(s, t, valid, torch.zeros(3, 4)), module(s, t, valid))


def test_alignment_loss_without_layers_is_attn_term_only():
    s, t, valid = _rand(3, 4), _rand(3, 4, 4, seed=1), torch.ones(3, 4, dtype=torch.bool)
    got = AlignmentLoss(r=2, lambda_attn=2.0)(s, t, valid)
    torch.testing.assert_close(got, 2.0 * child_mse(s, t, torch.ones(3, 4)).mean())


# ---- bad input: one clear message naming the argument ----

S_OK, T_OK = torch.zeros(2, 4, 4, 3), torch.zeros(2, 4, 3)
V_OK, W_OK = torch.ones(2, 4, dtype=torch.bool), torch.ones(2, 4)
s_OK = torch.zeros(2, 3)


@pytest.mark.parametrize(
    ("args", "match"),
    [
        ((s_OK.int(), T_OK, W_OK), "s must be float32"),
        ((s_OK, T_OK.double(), W_OK), "t has dtype torch.float64"),
        ((s_OK, T_OK, V_OK), "weight must be a float tensor"),
        ((s_OK[0], T_OK, W_OK), r"s must have shape \(N, D\)"),
        ((s_OK, T_OK[0], W_OK), r"t must have shape \(N, K, D\)"),
        ((s_OK, T_OK[:, :, :2], W_OK), r"t must have shape \(N, K, D\) = \(2, 4, 3\)"),
        ((s_OK, T_OK[:1], W_OK), r"t must have shape"),
        ((s_OK, T_OK, W_OK[:, :3]), r"weight must have shape \(N, K\) = \(2, 4\)"),
        ((s_OK[:, :0], T_OK[:, :, :0], W_OK), "D and K must be >= 1"),
        ((s_OK, T_OK.to("meta"), W_OK), "one device"),
        (([[0.0]], T_OK, W_OK), "s must be a torch.Tensor"),
    ],
)
def test_child_mse_bad_input(args, match):
    with pytest.raises(ValueError, match=match):
        child_mse(*args)


@pytest.mark.parametrize(
    ("args", "match"),
    [
        ((S_OK.half(), T_OK, V_OK, 2), "t has dtype torch.float32"),
        ((S_OK.long(), T_OK.long(), V_OK, 2), "S must be float32"),
        ((S_OK[0], T_OK, V_OK, 2), r"S must have shape \(N, G, G, D\)"),
        ((S_OK[:, :, :2], T_OK, V_OK, 2), "square grid"),
        ((S_OK, T_OK, V_OK, 1), "r must be an integer >= 2"),
        ((S_OK, T_OK, V_OK, 2.0), "r must be an integer >= 2"),
        ((S_OK, T_OK, V_OK, True), "r must be an integer >= 2"),
        ((S_OK, T_OK, V_OK, 3), "G = 4 of S is not a multiple of r = 3"),
        ((torch.zeros(2, 6, 6, 3), T_OK, V_OK, 4), "not a multiple"),
        ((S_OK, torch.zeros(2, 16, 3), V_OK, 2), r"t must have shape \(N, K, D\) = \(2, 4, 3\)"),
        ((S_OK, T_OK, V_OK.float(), 2), "valid must be a bool tensor"),
        ((S_OK, T_OK, V_OK[:, :2], 2), r"valid must have shape \(N, K\) = \(2, 4\)"),
        ((S_OK, T_OK, V_OK.to("meta"), 2), "one device"),
    ],
)
def test_block_mse_bad_input(args, match):
    with pytest.raises(ValueError, match=match):
        block_mse(*args)


def test_alignment_loss_bad_input():
    with pytest.raises(ValueError, match="r must be an integer >= 2"):
        AlignmentLoss(r=1)
    module = AlignmentLoss(r=2)
    with pytest.raises(ValueError, match="2 student grids but 1 teacher layers"):
        module(s_OK, T_OK, V_OK, None, [S_OK, S_OK], [T_OK])
    with pytest.raises(ValueError, match="valid must be a bool tensor"):
        module(s_OK, T_OK, W_OK)
    with pytest.raises(ValueError, match=r"attn must have shape \(N, K\) = \(2, 4\)"):
        module(s_OK, T_OK, V_OK, W_OK[:, :2])
