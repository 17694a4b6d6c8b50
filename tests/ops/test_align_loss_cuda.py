"""The alignment loss CUDA kernels against the reference; skipped where no GPU is seen."""

from __future__ import annotations

import pytest
import torch

from lrmil.errors import EnvironmentMissingError
from lrmil.ops import AlignmentLoss, _ext, block_mse, child_mse
from lrmil.ops import reference as ref
from lrmil.testing import assert_close_report

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

needs_kernels = pytest.mark.skipif(
    torch.cuda.is_available() and not _ext.CUDA_COMPILED,
    reason="lrmil was built without CUDA kernels",
)


def _rand(*shape, dtype=torch.float32, seed=0, grad=False):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*shape, generator=g, dtype=torch.float64).to("cuda", dtype)
    return x.requires_grad_(grad)


def _mask(n, k, seed=2, p=0.3):
    return (torch.rand(n, k, generator=torch.Generator().manual_seed(seed)) > p).cuda()


def _grads(loss, inputs, seed=3):
    upstream = torch.rand(loss.shape, generator=torch.Generator().manual_seed(seed))
    return torch.autograd.grad((loss * upstream.to(loss)).sum(), inputs)


def _compare(got, want, grads_got, grads_want, tol):
    assert_close_report(got, want, rtol=tol, atol=tol, name="loss")
    for i, (a, b) in enumerate(zip(grads_got, grads_want, strict=True)):
        assert_close_report(a, b, rtol=tol, atol=tol, name=f"grad {i}")


def test_cuda_tensors_need_a_cuda_build(monkeypatch):
    monkeypatch.setattr(_ext, "CUDA_COMPILED", False)
    s, t = _rand(2, 3), _rand(2, 4, 3)
    with pytest.raises(EnvironmentMissingError, match="child_mse: got CUDA tensors"):
        child_mse(s, t, torch.ones(2, 4, device="cuda"))


@needs_kernels
def test_devices_must_match():
    with pytest.raises(ValueError, match="one device"):
        child_mse(_rand(2, 3), _rand(2, 4, 3).cpu(), torch.ones(2, 4, device="cuda"))


@needs_kernels
@pytest.mark.parametrize("d", [1, 3, 127, 768, 1032])
@pytest.mark.parametrize("k", [4, 16])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_child_mse_matches_reference(d, k, dtype):
    s, t = _rand(37, d, dtype=dtype, grad=True), _rand(37, k, d, dtype=dtype, seed=1, grad=True)
    w = torch.rand(37, k, device="cuda")
    w[w < 0.25] = 0
    w[5] = 0
    got, want = child_mse(s, t, w), ref.child_mse(s, t, w)
    tol = 1e-5 if dtype == torch.float32 else 1e-10
    _compare(got, want, _grads(got, (s, t)), _grads(want, (s, t)), tol)


@needs_kernels
@pytest.mark.parametrize("d", [1, 3, 127, 768, 1032])
@pytest.mark.parametrize(("g", "r"), [(4, 2), (8, 2), (8, 4), (16, 4)])
def test_block_mse_matches_reference(d, g, r):
    grid, t = _rand(9, g, g, d, grad=True), _rand(9, r * r, d, seed=1, grad=True)
    valid = _mask(9, r * r)
    valid[2] = False
    got, want = block_mse(grid, t, valid, r), ref.block_mse(grid, t, valid, r)
    _compare(got, want, _grads(got, (grid, t)), _grads(want, (grid, t)), 1e-5)


@needs_kernels
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_matches_cpu_kernel(dtype):
    """The CPU kernel is held to flash-attention's rule in test_align_loss.py; the GPU one runs
    the same per-element code and must agree with it to fp32 rounding."""
    s, t = _rand(64, 300, dtype=dtype, grad=True), _rand(64, 16, 300, dtype=dtype, seed=1)
    grid, valid = _rand(64, 8, 8, 300, dtype=dtype, seed=2, grad=True), _mask(64, 16)
    w = torch.rand(64, 16, device="cuda")
    got = child_mse(s, t, w) + block_mse(grid, t, valid, 4)
    cpu_in = [x.detach().cpu().requires_grad_() for x in (s, grid)]
    want = child_mse(cpu_in[0], t.cpu(), w.cpu()) + block_mse(cpu_in[1], t.cpu(), valid.cpu(), 4)
    assert got.dtype == torch.float32
    tol = 2e-2 if dtype == torch.bfloat16 else 2e-3
    _compare(got, want, _grads(got, (s, grid)), _grads(want, cpu_in), tol)


@needs_kernels
def test_non_contiguous_and_side_stream():
    n, k, d = 8, 16, 33
    s_big, t_big = _rand(n, 2 * d, grad=True), _rand(k, n, d, seed=1, grad=True)
    grid_big = _rand(8, n, 8, d + 2, seed=4, grad=True)
    s, t = s_big[:, ::2], t_big.transpose(0, 1)
    grid = grid_big.permute(1, 2, 0, 3)[..., 1:-1]
    valid = _mask(k, n).t()
    w = torch.rand(n, 2 * k, device="cuda")[:, ::2]
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        got = child_mse(s, t, w) + block_mse(grid, t, valid, 4)
        grads = _grads(got, (s_big, t_big, grid_big))
    torch.cuda.current_stream().wait_stream(stream)
    want = ref.child_mse(s, t, w) + ref.block_mse(grid, t, valid, 4)
    _compare(got, want, grads, _grads(want, (s_big, t_big, grid_big)), 1e-5)


@needs_kernels
def test_deterministic():
    s, t = _rand(300, 257, grad=True), _rand(300, 16, 257, seed=1, grad=True)
    grid, valid = _rand(300, 16, 16, 257, seed=2, grad=True), _mask(300, 16)
    w = torch.rand(300, 16, device="cuda")

    def run():
        loss = child_mse(s, t, w) + block_mse(grid, t, valid, 4)
        return (loss, *_grads(loss, (s, t, grid)))

    for a, b in zip(run(), run(), strict=True):
        assert torch.equal(a, b)


@needs_kernels
def test_alignment_loss_and_opcheck():
    s, t = _rand(6, 10, grad=True), _rand(6, 16, 10, seed=1)
    grids, valid = [_rand(6, 8, 8, 10, seed=5, grad=True)], _mask(6, 16)
    attn = torch.rand(6, 16, device="cuda")
    got = AlignmentLoss(r=4)(s, t, valid, attn, grids, [t])
    want = ref.alignment_loss(s, t, valid, grids, [t], attn, r=4)
    _compare(got, want, torch.autograd.grad(got, s), torch.autograd.grad(want, s), 1e-5)
    torch.library.opcheck(torch.ops.lrmil.child_mse.default, (s, t, attn, True))
    torch.library.opcheck(torch.ops.lrmil.block_mse.default, (grids[0], t, valid, 4, True))


@needs_kernels
def test_zero_weight_and_invalid_children_are_not_read():
    s, t = _rand(5, 300, grad=True), _rand(5, 16, 300, seed=1, grad=True)
    w = torch.rand(5, 16, device="cuda")
    w[:, 3] = 0
    grid, valid = _rand(5, 8, 8, 300, seed=2, grad=True), _mask(5, 16)
    valid[:, 3] = False
    with torch.no_grad():
        t[:, 3] = float("nan")
    loss = child_mse(s, t, w) + block_mse(grid, t, valid, 4)
    loss.sum().backward()
    for name, x in (("loss", loss), ("ds", s.grad), ("dS", grid.grad), ("dt", t.grad)):
        assert torch.isfinite(x).all(), name
    assert t.grad[:, 3].abs().max() == 0


@needs_kernels
def test_backward_reads_only_the_residuals():
    """The CUDA backward starts from the forward's residuals too: s, S and t overwritten (NaN)
    between forward and backward leave the gradients unchanged."""
    s, t, w = _rand(6, 300, grad=True), _rand(6, 16, 300, seed=1), torch.rand(6, 16, device="cuda")
    grid, valid = _rand(6, 8, 8, 300, seed=2, grad=True), _mask(6, 16)
    want = _grads(ref.child_mse(s, t, w) + ref.block_mse(grid, t, valid, 4), (s, grid))
    loss = child_mse(s, t, w) + block_mse(grid, t, valid, 4)
    with torch.no_grad():
        for x in (s, t, grid):
            x.fill_(float("nan"))
    for i, (got, exp) in enumerate(zip(_grads(loss, (s, grid)), want, strict=True)):
        assert_close_report(got, exp, rtol=1e-5, atol=1e-6, name=f"grad {i}")


@needs_kernels
@pytest.mark.parametrize("layout", ["NHWC", "NCHW-view"])
def test_many_rows_and_cnn_layouts(layout):
    """N > 65,535 rows (grid x), and a CNN's NCHW grid seen as NHWC (copied to contiguous)."""
    n, g, d = 70_000, 4, 24
    grid = (
        _rand(n, g, g, d, seed=4)
        if layout == "NHWC"
        else _rand(n, d, g, g, seed=4).permute(0, 2, 3, 1)
    )
    grid.requires_grad_()
    t, valid = _rand(n, 4, d, seed=1), _mask(n, 4)
    got, want = block_mse(grid, t, valid, 2), ref.block_mse(grid, t, valid, 2)
    _compare(got, want, _grads(got, (grid,)), _grads(want, (grid,)), 1e-5)
    s, w = _rand(n, d, grad=True), torch.rand(n, 4, device="cuda")
    got, want = child_mse(s, t, w), ref.child_mse(s, t, w)
    _compare(got, want, _grads(got, (s,)), _grads(want, (s,)), 1e-5)


@needs_kernels
@pytest.mark.slow
def test_tensors_past_two_to_the_31_elements():
    """N K D > 2^31 (bf16): the last rows sit past element 2^31 (int64 indexing)."""
    s, t = (
        _rand(180_000, 768, dtype=torch.bfloat16, grad=True),
        _rand(180_000, 16, 768, dtype=torch.bfloat16, seed=1),
    )
    w = torch.rand(180_000, 16, device="cuda")
    loss = child_mse(s, t, w)
    assert_close_report(
        loss[-100:], ref.child_mse(s[-100:].detach(), t[-100:], w[-100:]), rtol=1e-2, atol=1e-3
    )
    loss[-1].backward()
    last = s.detach()[-1:].float().requires_grad_()
    ref.child_mse(last, t[-1:], w[-1:]).sum().backward()
    assert_close_report(s.grad[-1].float(), last.grad[0], rtol=2e-2, atol=1e-4, name="ds last row")
    assert s.grad[:-1].abs().max() == 0


@needs_kernels
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs a second GPU")
def test_second_device_and_current_device_restored():
    torch.cuda.set_device(0)
    s, t = _rand(37, 300).to("cuda:1").requires_grad_(), _rand(37, 16, 300, seed=1).to("cuda:1")
    w = torch.rand(37, 16, device="cuda:1")
    got, want = child_mse(s, t, w), ref.child_mse(s, t, w)
    assert torch.cuda.current_device() == 0 and got.device == torch.device("cuda", 1)
    _compare(got, want, _grads(got, (s,)), _grads(want, (s,)), 1e-5)


@needs_kernels
def test_torch_compile_fullgraph_on_cuda():
    s, t = _rand(64, 300, grad=True), _rand(64, 16, 300, seed=1)
    grid, valid, w = (
        _rand(64, 8, 8, 300, seed=2, grad=True),
        _mask(64, 16),
        torch.rand(64, 16, device="cuda"),
    )

    @torch.compile(fullgraph=True)
    def loss(s, grid):
        return (child_mse(s, t, w) + block_mse(grid, t, valid, 4)).sum()

    got = torch.autograd.grad(loss(s, grid), (s, grid))
    want = torch.autograd.grad((child_mse(s, t, w) + block_mse(grid, t, valid, 4)).sum(), (s, grid))
    for a, b in zip(got, want, strict=True):
        assert torch.equal(a, b)
