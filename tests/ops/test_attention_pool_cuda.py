"""The CUDA kernels of gated attention pooling; runs where a GPU and a CUDA build exist."""

from __future__ import annotations

import pytest
import torch

from lrmil.errors import EnvironmentMissingError
from lrmil.ops import _ext, gated_attention_pool, reference
from lrmil.ops import attention_pool as ap
from lrmil.testing import assert_close_report, max_abs_error
from lrmil.testing import attention_pool_inputs as make_inputs
from lrmil.testing import run_with_grads as run

has_gpu = torch.cuda.is_available()
needs_cuda_build = pytest.mark.skipif(
    not (has_gpu and _ext.cuda_compiled()), reason="needs a CUDA device and a CUDA build of lrmil"
)
NAMES = ["pooled", "attn", "logits", "grad_proj", "grad_x", "grad_w", "grad_b_w"]


def on_gpu(inputs):
    return [t.cuda() for t in inputs]


@pytest.mark.skipif(not has_gpu or _ext.cuda_compiled(), reason="needs a GPU and a CPU-only build")
def test_cuda_tensors_with_a_cpu_only_build_are_refused():
    with pytest.raises(EnvironmentMissingError, match="built without CUDA kernels"):
        gated_attention_pool(*on_gpu(make_inputs([2, 3], 4)))


@needs_cuda_build
@pytest.mark.parametrize("dim", [1, 3, 127, 768, 1032])
@pytest.mark.parametrize("lengths", [[0, 1, 2, 33, 0], [4097, 5], [100_000]])
def test_cuda_matches_reference(dim, lengths):
    inputs = make_inputs(lengths, dim, hidden=128, seed=dim)
    outs, grads = run(gated_attention_pool, *on_gpu(inputs))
    ref_outs, ref_grads = run(reference.gated_attention_pool, *inputs, cast=torch.float64)
    for name, got, want in zip(NAMES, outs + grads, ref_outs + ref_grads, strict=True):
        assert_close_report(got, want, rtol=1e-4, atol=1e-5, name=name)


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
        assert kernel_err <= 2 * torch_err + 1e-3, (
            f"{name}: kernel {kernel_err:.3g} vs torch {torch_err:.3g}"
        )


@needs_cuda_build
def test_cuda_non_contiguous_and_deterministic():
    proj, x, w, b_w, offsets = on_gpu(make_inputs([700, 0, 33], 96))
    buffer = torch.zeros(x.shape[0], 200, device="cuda")
    buffer[:, 50:146] = x
    first = run(gated_attention_pool, proj, buffer[:, 50:146], w, b_w, offsets)
    second = run(gated_attention_pool, proj, x, w, b_w, offsets)
    for a, b in zip(first[0] + first[1], second[0] + second[1], strict=True):
        assert torch.equal(a, b)


@needs_cuda_build
def test_cuda_opcheck_and_bad_offsets():
    proj, x, w, b_w, offsets = on_gpu(make_inputs([0, 3, 1, 6], 5))
    torch.library.opcheck(ap._pool_op, [t.requires_grad_() for t in (proj, x, w, b_w)] + [offsets])
    with pytest.raises(ValueError, match="non-decreasing"):
        gated_attention_pool(proj, x, w, b_w, torch.tensor([0, 6, 4, 10], device="cuda"))
    with pytest.raises(ValueError, match="x is on cuda:0 but offsets is on cpu"):
        gated_attention_pool(proj, x, w, b_w, offsets.cpu())
