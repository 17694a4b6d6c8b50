"""The fused gated attention pooling op against its pure-PyTorch reference (CPU kernels)."""

from __future__ import annotations

import pytest
import torch

from lrmil.ops import GatedAttentionPool, gated_attention_pool, reference
from lrmil.ops import attention_pool as ap
from lrmil.testing import assert_close_report, max_abs_error
from lrmil.testing import attention_pool_inputs as make_inputs
from lrmil.testing import run_with_grads as run

HIDDEN = 16  # attention_pool_inputs' default hidden size


def check_against_reference(inputs, rtol=1e-4, atol=1e-5):
    outs, grads = run(gated_attention_pool, *inputs)
    ref_outs, ref_grads = run(reference.gated_attention_pool, *inputs, cast=torch.float64)
    names = ["pooled", "attn", "logits", "grad_proj", "grad_x", "grad_w", "grad_b_w"]
    for name, got, want in zip(names, outs + grads, ref_outs + ref_grads, strict=True):
        assert torch.isfinite(got).all(), name
        assert_close_report(got, want, rtol=rtol, atol=atol, name=name)
    return outs, grads


@pytest.mark.parametrize("dim", [1, 3, 127, 768, 1032])
def test_matches_reference_odd_shapes(dim):
    check_against_reference(make_inputs([0, 1, 2, 33, 0, 5], dim, seed=dim))


def test_long_bag_and_empty_bags():
    outs, grads = check_against_reference(make_inputs([4097, 0, 1, 2, 33], 96))
    assert outs[0][1].abs().max() == 0  # the empty bag pools to zeros


def test_many_bags():
    lengths = torch.randint(0, 20, (1000,), generator=torch.Generator().manual_seed(3)).tolist()
    check_against_reference(make_inputs(lengths, 24))


def test_no_rows_at_all():
    proj, x, w, b_w, offsets = make_inputs([0, 0, 0], 5)
    outs, grads = run(gated_attention_pool, proj, x, w, b_w, offsets)
    assert outs[0].shape == (3, 5) and outs[0].abs().max() == 0
    assert grads[2].abs().max() == 0 and grads[3] == 0


def test_gradcheck_float64():
    proj, x, w, b_w, offsets = make_inputs([0, 1, 3, 5], 4, hidden=3, dtype=torch.float64)
    inputs = [t.requires_grad_() for t in (proj, x, w, b_w)]
    assert torch.autograd.gradcheck(lambda *a: gated_attention_pool(*a, offsets), inputs)


def test_non_contiguous_inputs_are_read_in_place():
    proj, x, w, b_w, offsets = make_inputs([7, 0, 40, 13], 50)
    n_rows = x.shape[0]
    proj_buffer = torch.randn(2 * n_rows, 3 * HIDDEN)
    proj_buffer[::2, 5 : 5 + 2 * HIDDEN] = proj
    x_buffer = torch.randn(n_rows, 70)
    x_buffer[:, 10:60] = x
    strided = (proj_buffer[::2, 5 : 5 + 2 * HIDDEN], x_buffer[:, 10:60])
    assert not strided[0].is_contiguous() and not strided[1].is_contiguous()
    expected = gated_attention_pool(proj, x, w, b_w, offsets)
    got = gated_attention_pool(*strided, w, b_w, offsets)
    for g, e in zip(got, expected, strict=True):
        assert torch.equal(g, e)
    check_against_reference((*strided, w, b_w, offsets))


def test_transposed_columns_are_handled():
    proj, x, w, b_w, offsets = make_inputs([3, 9], 6)
    check_against_reference((proj, x.t().contiguous().t(), w, b_w, offsets))


def test_huge_logits():
    # |logits| ~ 1e4: each bag's softmax is one-hot-like; max subtraction keeps it finite. fp32
    # rounds such logits by ~1e-3, which moves attn (and so the gradients) by ~1e-3 relative.
    check_against_reference(make_inputs([1, 17, 300], 8, w_scale=1e4), rtol=3e-3, atol=1e-2)


def test_huge_bias_flattens_attention_without_overflow():
    # b_w = -1e30 swamps every logit in fp32: attention becomes uniform, nothing overflows.
    proj, x, w, _, offsets = make_inputs([4, 9], 8)
    pooled, attn, _ = gated_attention_pool(proj, x, w, torch.tensor(-1e30), offsets)
    uniform = torch.cat([torch.full((4,), 1 / 4), torch.full((9,), 1 / 9)])
    assert_close_report(attn, uniform, name="attn")
    assert_close_report(pooled, torch.stack([x[:4].mean(0), x[4:].mean(0)]), name="pooled")


def test_all_minus_inf_logits_pool_to_zeros():
    proj, x, w, b_w, offsets = make_inputs([3, 4], 5)
    proj[:, :HIDDEN] = proj[:, :HIDDEN].abs() + 0.1  # tanh > 0, so w = -inf gives -inf logits
    pooled, attn, logits = gated_attention_pool(
        proj, x, torch.full_like(w, -float("inf")), b_w, offsets
    )
    assert torch.isneginf(logits).all()
    assert pooled.abs().max() == 0 and attn.abs().max() == 0


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_within_flash_attention_rule(dtype):
    # The kernel's error against an exact reference must be at most ~2x that of the plain
    # PyTorch formulation run in the same low precision, plus the rounding of the exact values.
    proj, x, w, b_w, offsets = make_inputs([0, 1, 33, 200, 57], 96, dtype=dtype)
    exact_outs, exact_grads = run(
        reference.gated_attention_pool, proj, x, w, b_w, offsets, cast=torch.float64
    )
    outs, grads = run(gated_attention_pool, proj, x, w, b_w, offsets)
    low_outs, low_grads = run(reference.gated_attention_pool_loop, proj, x, w, b_w, offsets)
    names = ["pooled", "attn", "logits", "grad_proj", "grad_x", "grad_w", "grad_b_w"]
    for name, got, low, exact in zip(
        names, outs + grads, low_outs + low_grads, exact_outs + exact_grads, strict=True
    ):
        assert got.dtype == (torch.float32 if name in ("attn", "logits") else dtype), name
        kernel_err, torch_err = max_abs_error(got, exact), max_abs_error(low, exact)
        slack = 1e-5 * float(exact.abs().max())  # fp32 rounding of the exact values
        assert kernel_err <= 2 * torch_err + slack, (
            f"{name}: kernel {kernel_err:.3g} vs torch {torch_err:.3g}"
        )


def test_deterministic_bitwise():
    inputs = make_inputs([20000, 1, 0, 777, 3000], 256, seed=5)
    first = run(gated_attention_pool, *inputs)
    second = run(gated_attention_pool, *inputs)
    for a, b in zip(first[0] + first[1], second[0] + second[1], strict=True):
        assert torch.equal(a, b)


def test_same_bits_with_one_and_two_threads():
    # torch and the kernels share one OpenMP runtime, so this sets the kernels' threads too.
    inputs = make_inputs([9000, 0, 3, 1500], 200, seed=6)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        single = run(gated_attention_pool, *inputs)
        torch.set_num_threads(2)
        double = run(gated_attention_pool, *inputs)
    finally:
        torch.set_num_threads(threads)
    for a, b in zip(single[0] + single[1], double[0] + double[1], strict=True):
        assert torch.equal(a, b)


def test_int32_offsets_match_int64():
    proj, x, w, b_w, offsets = make_inputs([2, 0, 5], 4)
    for a, b in zip(
        gated_attention_pool(proj, x, w, b_w, offsets.int()),
        gated_attention_pool(proj, x, w, b_w, offsets),
        strict=True,
    ):
        assert torch.equal(a, b)


def test_output_dtypes():
    for dtype, acc in [
        (torch.float32, torch.float32),
        (torch.bfloat16, torch.float32),
        (torch.float64, torch.float64),
    ]:
        pooled, attn, logits = gated_attention_pool(*make_inputs([2, 3], 4, dtype=dtype))
        assert (pooled.dtype, attn.dtype, logits.dtype) == (dtype, acc, acc)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_opcheck(dtype):
    proj, x, w, b_w, offsets = make_inputs([0, 3, 1, 6], 5, dtype=dtype)
    args = [t.requires_grad_() for t in (proj, x, w, b_w)] + [offsets]
    torch.library.opcheck(ap._pool_op, args)
    grad_pooled = torch.randn(4, 5, dtype=dtype)
    attn = gated_attention_pool(*args)[1].detach()
    backward_args = (
        grad_pooled,
        torch.randn_like(attn),
        None,
        proj.detach(),
        x.detach(),
        w.detach(),
        b_w.detach(),
        offsets,
        attn,
    )
    for need_grad_x in (True, False):
        torch.library.opcheck(ap._pool_backward_op, (*backward_args, need_grad_x))


def test_x_without_grad_skips_grad_x():
    proj, x, w, b_w, offsets = make_inputs([5, 0, 9], 7)

    def grads(x_needs_grad):
        leaves = [t.clone().requires_grad_() for t in (proj, w, b_w)]
        x_in = x.clone().requires_grad_(x_needs_grad)
        pooled, _, logits = gated_attention_pool(leaves[0], x_in, leaves[1], leaves[2], offsets)
        (pooled.sum() + logits.square().sum()).backward()
        return [t.grad for t in leaves], x_in.grad

    without_x, x_grad = grads(False)
    with_x, _ = grads(True)
    assert x_grad is None
    for got, want in zip(without_x, with_x, strict=True):
        assert torch.equal(got, want)


def test_torch_compile_fullgraph():
    proj, x, w, b_w, offsets = make_inputs([3, 0, 8], 6)

    @torch.compile(fullgraph=True, backend="aot_eager")
    def loss(proj, x, w, b_w, offsets):
        pooled, attn, logits = gated_attention_pool(proj, x, w, b_w, offsets)
        return pooled.square().sum() + (attn * logits).sum()

    leaves = [t.requires_grad_() for t in (proj, x, w, b_w)]
    loss(*leaves, offsets).backward()
    expected = [t.detach().clone().requires_grad_() for t in (proj, x, w, b_w)]
    pooled, attn, logits = reference.gated_attention_pool(*expected, offsets)
    (pooled.square().sum() + (attn * logits).sum()).backward()
    for got, want in zip(leaves, expected, strict=True):
        assert_close_report(got.grad, want.grad, rtol=1e-4, atol=1e-5)


def _bad(**changes):
    proj, x, w, b_w, offsets = make_inputs([2, 3], 4)
    args = {"proj": proj, "x": x, "w": w, "b_w": b_w, "offsets": offsets}
    args.update(changes)
    return args


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (_bad(x=torch.zeros(5, 4, dtype=torch.int64)), r"x must be float32.*int64"),
        (_bad(x=torch.zeros(5, 4, 1)), r"x must have shape \(T, D\), got \(5, 4, 1\)"),
        (
            _bad(proj=torch.zeros(5, 2 * HIDDEN + 1)),
            r"proj must be \(T, 2L\) = \(5, 32\).*\(5, 33\)",
        ),
        (_bad(proj=torch.zeros(6, 2 * HIDDEN)), r"proj must be \(T, 2L\)"),
        (
            _bad(proj=torch.zeros(5, 2 * HIDDEN, dtype=torch.float64)),
            r"proj has dtype torch.float64 but x has torch.float32",
        ),
        (_bad(w=torch.zeros(HIDDEN, 1)), r"w must have shape \(L,\)"),
        (_bad(b_w=torch.zeros(2)), r"b_w must be a scalar"),
        (_bad(offsets=torch.tensor([0.0, 2.0, 5.0])), r"offsets must be int64.*float32"),
        (_bad(offsets=torch.tensor([[0, 2, 5]])), r"offsets must have shape \(B \+ 1,\)"),
        (_bad(x=[[0.0] * 4] * 5), r"x must be a torch.Tensor \(T, D\), got list"),
        (_bad(b_w=0.5), r"b_w must be a scalar tensor \(\), got float"),
        (_bad(offsets=torch.tensor([1, 2, 5])), r"offsets\[0\] must be 0, got 1"),
        (
            _bad(offsets=torch.tensor([0, 2, 4])),
            r"offsets\[-1\] must equal T = x.shape\[0\] = 5, got 4",
        ),
        (
            _bad(offsets=torch.tensor([0, 3, 2, 5])),
            r"non-decreasing.*offsets\[2\] = 2 < offsets\[1\] = 3",
        ),
        (_bad(w=torch.zeros(HIDDEN, device="meta")), r"x is on cpu but w is on meta"),
    ],
)
def test_bad_inputs_name_the_argument(args, message):
    with pytest.raises(ValueError, match=message):
        gated_attention_pool(**args)


def test_unsupported_device_is_refused():
    with pytest.raises(ValueError, match="unsupported device meta"):
        gated_attention_pool(*(t.to("meta") for t in make_inputs([2, 3], 4)))


def test_module_matches_reference_and_trains():
    torch.manual_seed(0)
    layer = GatedAttentionPool(12, hidden=8)
    x = torch.randn(30, 12)
    offsets = torch.tensor([0, 10, 10, 30])
    pooled, attn, logits = layer(x, offsets)
    ref = reference.gated_attention_pool(layer.gate(x), x, layer.w, layer.b_w, offsets)
    for got, want in zip((pooled, attn, logits), ref, strict=True):
        assert_close_report(got, want, rtol=1e-5, atol=1e-6)
    pooled.sum().backward()
    assert all(p.grad is not None for p in layer.parameters())
    with pytest.raises(ValueError, match=r"x must be \(T, 12\)"):
        layer(torch.randn(3, 5), torch.tensor([0, 3]))


@pytest.mark.parametrize("x_needs_grad", [False, True])
def test_module_training_gradients_match_reference(x_needs_grad):
    torch.manual_seed(0)
    layer = GatedAttentionPool(12, hidden=8)
    x = torch.randn(40, 12, requires_grad=x_needs_grad)
    offsets = torch.tensor([0, 10, 10, 33, 40])

    def loss_and_grads(pool):
        layer.zero_grad(set_to_none=True)
        x.grad = None
        pooled, attn, logits = pool()
        (pooled.square().sum() + (attn * logits).sum()).backward()
        return [p.grad.clone() for p in layer.parameters()] + [x.grad]

    got = loss_and_grads(lambda: layer(x, offsets))
    want = loss_and_grads(
        lambda: reference.gated_attention_pool(layer.gate(x), x, layer.w, layer.b_w, offsets)
    )
    for g, w in zip(got, want, strict=True):
        if not x_needs_grad and w is None:
            assert g is None
            continue
        assert_close_report(g, w, rtol=1e-4, atol=1e-5)


def test_module_backward_twice_is_refused():
    layer = GatedAttentionPool(4, hidden=2)
    pooled, _, _ = layer(torch.randn(5, 4), torch.tensor([0, 5]))
    pooled.sum().backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="backward ran twice"):
        pooled.sum().backward()


def test_module_under_torch_compile():
    torch.manual_seed(0)
    layer = GatedAttentionPool(8, hidden=4)
    x, offsets = torch.randn(20, 8), torch.tensor([0, 7, 20])
    compiled = torch.compile(layer, backend="aot_eager")
    compiled(x, offsets)[0].sum().backward()
    got = [p.grad.clone() for p in layer.parameters()]
    layer.zero_grad()
    layer(x, offsets)[0].sum().backward()
    for g, p in zip(got, layer.parameters(), strict=True):
        assert_close_report(g, p.grad, rtol=1e-5, atol=1e-6)


def test_module_exports_without_the_custom_op():
    layer = GatedAttentionPool(6, hidden=4).eval()
    x, offsets = torch.randn(9, 6), torch.tensor([0, 4, 9])
    program = torch.export.export(layer, (x, offsets))
    assert "lrmil" not in str(program.graph)
    for got, want in zip(program.module()(x, offsets), layer(x, offsets), strict=True):
        assert_close_report(got, want, rtol=1e-5, atol=1e-6)


def test_module_exports_to_onnx_and_runs(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    layer = GatedAttentionPool(6, hidden=4).eval()
    x, offsets = torch.randn(9, 6), torch.tensor([0, 4, 4, 9])
    path = tmp_path / "pool.onnx"
    torch.onnx.export(layer, (x, offsets), dynamo=True, input_names=["x", "offsets"]).save(path)
    session = ort.InferenceSession(str(path))
    outputs = session.run(None, {"x": x.numpy(), "offsets": offsets.numpy()})
    for got, want in zip(outputs, layer(x, offsets), strict=True):
        assert_close_report(torch.from_numpy(got), want.detach(), rtol=1e-5, atol=1e-6)
