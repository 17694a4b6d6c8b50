"""The CUDA kernels of gated attention pooling; runs where a GPU and a CUDA build exist.

The host-side logic (chunk plan, workspace layout, argument checks, NaN handling of the shared
math) is tested on the CPU in test_conventions.py.
"""

from __future__ import annotations

import pytest
import torch

from lrmil.errors import EnvironmentMissingError
from lrmil.ops import GatedAttentionPool, _ext, gated_attention_pool, reference
from lrmil.ops import attention_pool as ap
from lrmil.testing import assert_close_report, max_abs_error
from lrmil.testing import attention_pool_inputs as make_inputs
from lrmil.testing import run_with_grads as run

has_gpu = torch.cuda.is_available()
pytestmark = pytest.mark.cuda
needs_cuda_build = pytest.mark.skipif(
    not (has_gpu and _ext.CUDA_COMPILED), reason="needs a CUDA device and a CUDA build of lrmil"
)
NAMES = ["pooled", "attn", "logits", "grad_proj", "grad_x", "grad_w", "grad_b_w"]


def on_gpu(inputs, device="cuda"):
    return [t.to(device) for t in inputs]


def check_against_reference(inputs, rtol=1e-4, atol=1e-5):
    outs, grads = run(gated_attention_pool, *on_gpu(inputs))
    ref_outs, ref_grads = run(reference.gated_attention_pool, *inputs, cast=torch.float64)
    for name, got, want in zip(NAMES, outs + grads, ref_outs + ref_grads, strict=True):
        assert_close_report(got, want, rtol=rtol, atol=atol, name=name)


@pytest.mark.skipif(not has_gpu or _ext.CUDA_COMPILED, reason="needs a GPU and a CPU-only build")
def test_cuda_tensors_with_a_cpu_only_build_are_refused():
    with pytest.raises(EnvironmentMissingError, match="built without CUDA kernels"):
        gated_attention_pool(*on_gpu(make_inputs([2, 3], 4)))


@needs_cuda_build
@pytest.mark.parametrize("dim", [1, 3, 127, 768, 1032])
@pytest.mark.parametrize("lengths", [[0, 1, 2, 33, 0], [4097, 5], [100_000], [256, 257, 0, 513]])
def test_cuda_matches_reference(dim, lengths):
    check_against_reference(make_inputs(lengths, dim, hidden=128, seed=dim))


@needs_cuda_build
def test_cuda_float64_gradcheck():
    proj, x, w, b_w, offsets = on_gpu(make_inputs([0, 1, 3, 5], 4, hidden=3, dtype=torch.float64))
    leaves = [t.requires_grad_() for t in (proj, x, w, b_w)]
    assert torch.autograd.gradcheck(lambda *a: gated_attention_pool(*a, offsets), leaves)


@needs_cuda_build
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cuda_low_precision_within_flash_attention_rule(dtype):
    inputs = make_inputs([0, 1, 33, 2000, 57], 768, hidden=128, dtype=dtype)
    exact = run(reference.gated_attention_pool, *inputs, cast=torch.float64)
    kernel = run(gated_attention_pool, *on_gpu(inputs))
    low = run(reference.gated_attention_pool_loop, *on_gpu(inputs))
    for name, got, lp, ex in zip(
        NAMES, kernel[0] + kernel[1], low[0] + low[1], exact[0] + exact[1], strict=True
    ):
        kernel_err, torch_err = max_abs_error(got, ex), max_abs_error(lp, ex)
        slack = 1e-5 * float(ex.abs().max())  # fp32 rounding of the exact values
        assert kernel_err <= 2 * torch_err + slack, (
            f"{name}: kernel {kernel_err:.3g} vs torch {torch_err:.3g}"
        )


@needs_cuda_build
def test_cuda_run_to_run_deterministic():
    inputs = on_gpu(make_inputs([20000, 1, 0, 777, 3000], 256, hidden=128, seed=5))
    first, second = run(gated_attention_pool, *inputs), run(gated_attention_pool, *inputs)
    for name, a, b in zip(NAMES, first[0] + first[1], second[0] + second[1], strict=True):
        assert torch.equal(a, b), name


@needs_cuda_build
def test_cuda_strided_input_read_in_place_matches_contiguous():
    proj, x, w, b_w, offsets = on_gpu(make_inputs([700, 0, 33], 96))
    buffer = torch.zeros(x.shape[0], 200, device="cuda")
    buffer[:, 50:146] = x
    strided = run(gated_attention_pool, proj, buffer[:, 50:146], w, b_w, offsets)
    contiguous = run(gated_attention_pool, proj, x, w, b_w, offsets)
    for name, a, b in zip(
        NAMES, strided[0] + strided[1], contiguous[0] + contiguous[1], strict=True
    ):
        assert_close_report(a, b, rtol=1e-6, atol=1e-7, name=name)  # scalar vs 16-byte loads


@needs_cuda_build
def test_cuda_opcheck_and_bad_offsets():
    proj, x, w, b_w, offsets = on_gpu(make_inputs([0, 3, 1, 6], 5))
    torch.library.opcheck(ap._pool_op, [t.requires_grad_() for t in (proj, x, w, b_w)] + [offsets])
    with pytest.raises(ValueError, match="x is on cuda:0 but offsets is on cpu"):
        gated_attention_pool(proj, x, w, b_w, offsets.cpu())


@needs_cuda_build
def test_cuda_side_stream_waits_for_its_input():
    """The backward queued on a busy side stream reads its gradient there, after the copy."""
    p, x, w, b, o = on_gpu(make_inputs([3000, 0, 77, 20000], 768, hidden=128))
    pooled, attn, _ = gated_attention_pool(p, x, w, b, o)
    grad = torch.randn_like(pooled)
    want = ap._pool_backward_op(grad, None, None, p, x, w, b, o, attn, True)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    late = torch.zeros_like(grad)
    with torch.cuda.stream(side):
        torch.cuda._sleep(100_000_000)
        late.copy_(grad)
        got = ap._pool_backward_op(late, None, None, p, x, w, b, o, attn, True)
    torch.cuda.synchronize()
    for name, a, b in zip(("grad_proj", "grad_x", "grad_w", "grad_b_w"), got, want, strict=True):
        assert torch.equal(a, b), name


@needs_cuda_build
def test_cuda_more_than_65535_bags():
    lengths = torch.randint(0, 5, (100_000,), generator=torch.Generator().manual_seed(0)).tolist()
    check_against_reference(make_inputs(lengths, 64, hidden=16))


@needs_cuda_build
@pytest.mark.slow
def test_cuda_tensor_past_two_to_the_31_elements():
    """T * D > 2^31: the last bag's rows start past element 2^31 (int64 indexing)."""
    lengths, dim = [1_000_000, 400_000, 2_000], 1536
    gen = torch.Generator("cuda").manual_seed(0)
    x = torch.randn(sum(lengths), dim, device="cuda", dtype=torch.bfloat16, generator=gen)
    proj = torch.randn(sum(lengths), 256, device="cuda", dtype=torch.bfloat16, generator=gen)
    w = torch.randn(128, device="cuda", generator=gen)
    b_w, offsets = (
        torch.zeros((), device="cuda"),
        torch.tensor([0, *lengths], device="cuda").cumsum(0),
    )
    x.requires_grad_()
    pooled, attn, logits = gated_attention_pool(proj, x, w, b_w, offsets)
    want = reference.gated_attention_pool(proj, x.detach(), w, b_w, offsets)
    for name, got, ref in zip(
        ("pooled", "attn", "logits"), (pooled, attn, logits), want, strict=True
    ):
        assert_close_report(got.float(), ref.float(), rtol=2e-2, atol=1e-2, name=name)
    pooled[2].float().sum().backward()
    tail = x.grad[-2000:].float()  # d pooled[2].sum() / d x_t = attn_t for the last bag's rows
    assert_close_report(tail, attn[-2000:, None].expand_as(tail), rtol=1e-2, atol=1e-6, name="dx")
    assert x.grad[:-2000].abs().max() == 0


@needs_cuda_build
def test_cuda_nan_inputs_propagate_like_the_cpu():
    inputs = make_inputs([4, 3], 8, hidden=4)
    inputs[0][5, 0] = float("nan")
    cpu = gated_attention_pool(*inputs)
    gpu = gated_attention_pool(*on_gpu(inputs))
    for name, a, b in zip(("pooled", "attn", "logits"), gpu, cpu, strict=True):
        assert_close_report(a, b, rtol=1e-5, atol=1e-6, name=name)  # NaNs must match
    assert torch.isnan(gpu[2][5])


@needs_cuda_build
def test_cuda_training_layer_in_place_backward_matches_reference():
    torch.manual_seed(0)
    layer = GatedAttentionPool(768, 128).cuda()
    x = torch.randn(6000, 768, device="cuda", requires_grad=True)
    offsets = torch.tensor([0, 1000, 1000, 6000], device="cuda")
    upstream = torch.randn(6000, device="cuda")

    def grads(forward):
        pooled, attn, _ = forward()
        (pooled.square().sum() + (attn * upstream).sum()).backward()
        out = [layer.gate.weight.grad.clone(), layer.w.grad.clone(), x.grad.clone()]
        layer.zero_grad()
        x.grad = None
        return out

    got = grads(lambda: layer(x, offsets))
    want = grads(
        lambda: reference.gated_attention_pool(layer.gate(x), x, layer.w, layer.b_w, offsets)
    )
    for name, g, e in zip(("d gate.weight", "d w", "d x"), got, want, strict=True):
        assert_close_report(g, e, rtol=1e-4, atol=1e-5, name=name)


@needs_cuda_build
@pytest.mark.parametrize("options", [{"fullgraph": True}, {"mode": "reduce-overhead"}])
def test_cuda_torch_compile_gives_the_eager_results(options):
    """fullgraph: no graph break in the op's Python; reduce-overhead: CUDA-graph capture (no
    host sync inside the op)."""
    inputs = on_gpu(make_inputs([500, 20, 3000], 256, hidden=128))
    compiled = torch.compile(gated_attention_pool, **options)
    got = [compiled(*inputs) for _ in range(4)][-1]
    for name, a, b in zip(
        ("pooled", "attn", "logits"), got, gated_attention_pool(*inputs), strict=True
    ):
        assert torch.equal(a, b), name


@needs_cuda_build
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cuda_large_hidden_size(dtype):
    """The gate backward has no shared memory: hidden sizes past 7.2k (fp32) / 3.6k (fp64)."""
    check_against_reference(make_inputs([300, 0, 41], 16, hidden=8192, dtype=dtype), rtol=1e-3)


@needs_cuda_build
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs a second GPU")
def test_cuda_second_device_and_current_device_restored():
    torch.cuda.set_device(0)
    inputs = make_inputs([700, 0, 33], 96)
    outs, grads = run(gated_attention_pool, *on_gpu(inputs, "cuda:1"))
    assert torch.cuda.current_device() == 0
    assert all(t.device == torch.device("cuda", 1) for t in outs + grads)
    ref_outs, ref_grads = run(reference.gated_attention_pool, *inputs, cast=torch.float64)
    for name, got, want in zip(NAMES, outs + grads, ref_outs + ref_grads, strict=True):
        assert_close_report(got, want, rtol=1e-4, atol=1e-5, name=name)
