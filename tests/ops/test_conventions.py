"""The conventions both fused ops share (lrmil/ops/_ext.py), and the host-side logic of the CUDA
kernels that runs, and so is checked, without a GPU: launch plans, workspace sizes, argument
checks of the bindings, NaN handling of the shared per-element math."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from lrmil import _native
from lrmil.errors import EnvironmentMissingError
from lrmil.ops import _ext, block_mse, child_mse, gated_attention_pool, reference
from lrmil.ops import attention_pool as ap
from lrmil.testing import assert_close_report, attention_pool_inputs

POOL = attention_pool_inputs([2, 3], 4)
S, T, W = torch.zeros(2, 3), torch.zeros(2, 4, 3), torch.ones(2, 4)
GRID, VALID = torch.zeros(2, 4, 4, 3), torch.ones(2, 4, dtype=torch.bool)


def _pool(**changes):
    args = dict(zip(("proj", "x", "w", "b_w", "offsets"), POOL, strict=True)) | changes
    return lambda: gated_attention_pool(**args)


BAD_CALLS = {
    "pool: x not a tensor": _pool(x=POOL[1].tolist()),
    "pool: offsets not a tensor": _pool(offsets=[0, 2, 5]),
    "pool: x of ints": _pool(x=POOL[1].long()),
    "pool: proj of another dtype": _pool(proj=POOL[0].double()),
    "pool: w of the wrong shape": _pool(w=POOL[2][None]),
    "pool: offsets past T": _pool(offsets=torch.tensor([0, 2, 9])),
    "pool: tensors on two devices": _pool(w=POOL[2].to("meta")),
    "child_mse: s not a tensor": lambda: child_mse(S.tolist(), T, W),
    "child_mse: t of another dtype": lambda: child_mse(S, T.double(), W),
    "child_mse: weight of the wrong shape": lambda: child_mse(S, T, W[:, :3]),
    "child_mse: tensors on two devices": lambda: child_mse(S, T.to("meta"), W),
    "block_mse: S not a tensor": lambda: block_mse(GRID.tolist(), T, VALID, 2),
    "block_mse: t of another dtype": lambda: block_mse(GRID, T.half(), VALID, 2),
    "block_mse: r not an integer": lambda: block_mse(GRID, T, VALID, 2.0),
    "block_mse: valid not bool": lambda: block_mse(GRID, T, VALID.float(), 2),
}


@pytest.mark.parametrize("call", list(BAD_CALLS))
def test_every_bad_argument_raises_value_error_naming_the_op(call):
    with pytest.raises(ValueError) as info:
        BAD_CALLS[call]()
    assert type(info.value) is ValueError  # one type for both ops, not a subclass or TypeError
    op = call.split(":")[0].replace("pool", "gated_attention_pool")
    assert str(info.value).startswith(f"{op}: "), str(info.value)


def test_bindings_check_raw_arguments_naming_tensor_and_shape():
    lib = _ext.lib()
    ptr = POOL[1].data_ptr()
    common = dict(n_rows=5, n_bags=2, hidden=16, dim=4, dtype=0, proj=ptr, proj_row_stride=32,
                  x=0, x_row_stride=4, w=ptr, b_w=ptr, offsets=ptr, pooled=ptr, attn=ptr,
                  logits=ptr, cuda=False, stream=0, plan=0, workspace=0,
                  workspace_bytes=0)  # fmt: skip
    with pytest.raises(ValueError, match=r"gated_attention_pool: x \(T, D\) = \(5, 4\): null"):
        lib.attention_pool_forward(**common)
    with pytest.raises(ValueError, match=r"x \(T, D\) = \(5, 4\): row stride 2 < 4 columns"):
        lib.attention_pool_forward(**(common | {"x": ptr, "x_row_stride": 2}))
    with pytest.raises(ValueError, match="unknown dtype code 7"):
        lib.attention_pool_forward(**(common | {"x": ptr, "dtype": 7}))
    with pytest.raises(ValueError, match=r"child_mse: t \(N, K, D\) = \(2, 4, 3\): null"):
        lib.child_mse_fwd(
            0, False, 0, (2, 4, 3), ptr, (3, 1), 0, (12, 3, 1), ptr, (4, 1), ptr, 0, 0
        )
    with pytest.raises(ValueError, match=r"block_mse: S \(N, G, G, D\) needs G a multiple of r"):
        lib.block_mse_fwd(0, False, 0, (2, 4, 3, 3), ptr, (48, 12, 3, 1), ptr, (12, 3, 1), ptr,
                          (4, 1), ptr, 0, 0)  # fmt: skip


def test_cuda_compiled_is_read_once_at_import():
    assert isinstance(_ext.CUDA_COMPILED, bool)
    assert bool(_ext.lib().cuda_compiled()) == _ext.CUDA_COMPILED


def test_cuda_tensors_with_a_cpu_only_build_are_refused(monkeypatch):
    monkeypatch.setattr(_ext, "CUDA_COMPILED", False)
    cuda_like = SimpleNamespace(device=torch.device("cuda", 0))  # only .device is read
    with pytest.raises(EnvironmentMissingError, match="built without CUDA kernels"):
        _ext.check_device_supported("child_mse", cuda_like)


def test_a_missing_core_names_the_fix(monkeypatch):
    monkeypatch.setattr(_native, "_core", None)
    monkeypatch.setattr(_native, "_missing", "No module named 'lrmil._C'")
    with pytest.raises(EnvironmentMissingError, match=r"lrmil._C\) is not built: run `make build`"):
        _native.lib()


@pytest.mark.parametrize(
    "lengths",
    [[], [0], [0, 0, 5], [256], [257], [100_000], [0, 1, 255, 256, 257, 513, 0, 3000],
     torch.randint(0, 600, (5000,), generator=torch.Generator().manual_seed(0)).tolist()],
)  # fmt: skip
def test_cuda_chunk_plan_stays_within_the_layout_bounds(lengths):
    offsets = torch.tensor([0, *lengths]).cumsum(0)
    for backward in (False, True):
        layout = _ext.lib().attention_pool_cuda_layout(
            int(offsets[-1]), len(lengths), 128, 768, 0, backward
        )
        plan = ap.cuda_chunk_plan(offsets, layout["chunk_rows"])
        chunks = [max(1, -(-n // layout["chunk_rows"])) for n in lengths]
        assert plan[0].tolist() == torch.tensor([0, *chunks]).cumsum(0).tolist()
        slots = [c if c > 1 else 0 for c in chunks]
        assert plan[1].tolist() == torch.tensor([0, *slots]).cumsum(0).tolist()
        assert int(plan[0, -1]) <= layout["max_chunks"]
        assert int(plan[1, -1]) <= layout["max_slots"]


def test_cuda_layout_has_no_hidden_size_cap_and_sizes_the_workspace():
    lib = _ext.lib()
    for hidden, code, acc in ((7200, 0, 4), (10_000, 3, 8), (1, 2, 4)):
        layout = lib.attention_pool_cuda_layout(1000, 3, hidden, 768, code, True)
        assert layout["hidden_tiles"] == -(-hidden // 128)
        # gate partials (row blocks x (L + 1)) and d/d logit (T) are in the backward workspace
        assert layout["bytes"] >= acc * (layout["gate_blocks"] * (hidden + 1) + 1000)
    forward = lib.attention_pool_cuda_layout(100_000, 1, 128, 512, 0, False)
    assert forward["bytes"] >= 4 * forward["max_slots"] * 512
    assert lib.align_loss_cuda_tiles(768) == 3 and lib.align_loss_cuda_tiles(1) == 1


def test_nan_logit_propagates_like_the_reference():
    """The shared clamp of exp's argument keeps NaN (compare-and-select, not fminf/fmaxf):
    a NaN in proj gives a NaN logit and a NaN pooled row, the other bag stays finite."""
    proj, x, w, b_w, offsets = attention_pool_inputs([4, 3], 8, hidden=4)
    proj[5, 0] = float("nan")
    got = gated_attention_pool(proj, x, w, b_w, offsets)
    want = reference.gated_attention_pool(proj, x, w, b_w, offsets)
    assert torch.isnan(got[2][5]) and torch.isnan(got[0][1]).all()
    assert torch.isfinite(got[0][0]).all()
    for name, g, e in zip(("pooled", "attn", "logits"), got, want, strict=True):
        assert_close_report(g, e, rtol=1e-5, atol=1e-6, name=name)


def test_zero_weight_children_are_not_read_in_backward():
    """NaN in children of weight 0 (child_mse) or invalid children (block_mse) must not reach
    any gradient: the kernels write 0 there without reading them."""
    s = torch.randn(3, 8, requires_grad=True)
    t = torch.randn(3, 4, 8, requires_grad=True)
    weight = torch.rand(3, 4)
    weight[:, 1] = 0
    t.data[:, 1] = float("nan")
    loss = child_mse(s, t, weight)
    loss.sum().backward()
    assert torch.isfinite(loss).all() and torch.isfinite(s.grad).all()
    assert torch.isfinite(t.grad).all() and t.grad[:, 1].abs().max() == 0
    grid = torch.randn(3, 4, 4, 8, requires_grad=True)
    valid = torch.ones(3, 4, dtype=torch.bool)
    valid[:, 1] = False
    t.grad = None
    loss = block_mse(grid, t, valid, 2)
    loss.sum().backward()
    assert torch.isfinite(loss).all() and torch.isfinite(grid.grad).all()
    assert torch.isfinite(t.grad).all() and t.grad[:, 1].abs().max() == 0
