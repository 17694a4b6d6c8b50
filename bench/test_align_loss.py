"""Benchmarks of the fused alignment loss (performance.md, "Kernels").

Per case, the fused op against every formulation a skilled user would write, each eager and
each under torch.compile with static and with dynamic shapes, and a copy of the op's main input
(the bandwidth yardstick), all timed interleaved (bench/conftest.py):
- child_mse: the broadcast difference (lrmil.ops.reference), and the expanded square
  `sum_k w_k |t_k|^2 - 2 s . tbar + |s|^2` with a batched matmul (no (N, K, D) temporary);
- block_mse: the view/mean of the reference, and avg_pool2d over the grid seen as NCHW.
Forward alone and forward+backward (gradient to the student; the teacher is frozen as in
stage 1). Correctness is asserted before timing.

Timing runs under glibc's steady state in a training loop: glibc raises its mmap threshold to
the largest block freed so far (at most 32 MiB on 64-bit), so buffers below 32 MiB come back
from the heap without page faults, while bigger ones (block_mse's (N, G, G, D) gradient) are
fresh mmaps, page faults included, for every contender alike (the faults per call are in the
results).

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python -m pytest bench/test_align_loss.py -p no:cacheprovider

writes bench/results/align_loss_cpu.md and .json.
"""

from __future__ import annotations

import contextlib
import ctypes

import pytest
import torch
import torch.nn.functional as F  # noqa: N812
from conftest import Results, interleaved, peak_extra_bytes, try_compile

from lrmil.ops import block_mse, child_mse
from lrmil.ops import reference as ref

K, G, R = 16, 16, 4
CASES = {  # name -> (op, N, D): stage 1's 64-row batches and the larger ones of issue 14
    "child_mse N=256 D=768": ("child", 256, 768),
    "child_mse N=4096 D=768": ("child", 4096, 768),
    "block_mse N=64 D=768": ("block", 64, 768),
    "block_mse N=1024 D=768": ("block", 1024, 768),
}

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_GLIBC_MAX_MMAP_THRESHOLD = 32 * 2**20  # DEFAULT_MMAP_THRESHOLD_MAX on 64-bit
_FRESH_PAGES = 128 * 1024  # bench/conftest.py's policy

for _name in ("recompile_limit", "cache_size_limit"):  # one graph per case, mode and option
    if hasattr(torch._dynamo.config, _name):
        setattr(torch._dynamo.config, _name, 64)


@contextlib.contextmanager
def _steady_state_malloc():
    """glibc's allocator as a training loop sees it (module docstring); conftest's fresh-page
    policy is restored afterwards and the heap given back, for the next peak measurement."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc: time under the platform's allocator as it is
        yield
        return
    libc.mallopt(_M_MMAP_THRESHOLD, _GLIBC_MAX_MMAP_THRESHOLD)
    libc.mallopt(_M_TRIM_THRESHOLD, 2 * _GLIBC_MAX_MMAP_THRESHOLD)
    try:
        yield
    finally:
        libc.mallopt(_M_MMAP_THRESHOLD, _FRESH_PAGES)
        libc.mallopt(_M_TRIM_THRESHOLD, _FRESH_PAGES)
        libc.malloc_trim(0)


def child_mse_matmul(s, t, weight):
    """child_mse expanded: sum_k w_k |t_k - s|^2 = sum_k w_k |t_k|^2 - 2 s . tbar + W |s|^2,
    with tbar = sum_k w_k t_k by a batched matmul; no (N, K, D) temporary."""
    total = weight.sum(1, keepdim=True)
    norm = torch.where(total > 0, weight / total.clamp_min(torch.finfo(s.dtype).tiny), 0.0)
    tbar = torch.bmm(norm[:, None, :], t)[:, 0]
    t_sq = torch.linalg.vector_norm(t, dim=2).square()
    has = (total[:, 0] > 0).to(s.dtype)
    err = (norm * t_sq).sum(1) - 2 * (s * tbar).sum(1) + has * s.square().sum(1)
    return err / s.shape[1]


def block_mse_avgpool(S, t, valid, r):  # noqa: N803
    """block_mse with the block means from avg_pool2d of the grid as an NCHW view."""
    n, g, _, d = S.shape
    means = F.avg_pool2d(S.permute(0, 3, 1, 2), g // r)  # (N, D, r, r)
    per_child = (means.flatten(2).transpose(1, 2) - t).square().mean(2)
    mask = valid.to(per_child.dtype)
    count = mask.sum(1)
    return torch.where(count > 0, (per_child * mask).sum(1) / count.clamp_min(1.0), 0.0)


FORMULATIONS = {
    "child": {"broadcast": ref.child_mse, "matmul": child_mse_matmul},
    "block": {"view-mean": ref.block_mse, "avg_pool": block_mse_avgpool},
}
FUSED = {"child": child_mse, "block": block_mse}


def _inputs(op: str, n: int, d: int):
    """(student, op args, {mode: bytes the op must move at the least}, copy source)."""
    g = torch.Generator().manual_seed(0)
    t = torch.randn(n, K, d, generator=g)
    if op == "child":
        s = torch.randn(n, d, generator=g, requires_grad=True)
        w = torch.rand(n, K, generator=g)
        # fwd (no grad): read t and s; fwd+bwd also writes tbar, then reads s and tbar and
        # writes ds.
        fwd = (t.numel() + s.numel()) * 4
        return s, (s, t, w), {"fwd": fwd, "fwd+bwd": fwd + 4 * s.numel() * 4}, t
    grid = torch.randn(n, G, G, d, generator=g, requires_grad=True)
    valid = torch.rand(n, K, generator=g) > 0.2
    # fwd: read S and t; fwd+bwd: read S and t, write dS (an ideal fused pair).
    fwd = (grid.numel() + t.numel()) * 4
    return grid, (grid, t, valid, R), {"fwd": fwd, "fwd+bwd": fwd + grid.numel() * 4}, grid


def _step(fn, mode: str, student, args):
    if mode == "fwd":

        def forward():
            with torch.no_grad():
                return fn(*args)

        return forward
    return lambda: torch.autograd.grad(fn(*args).sum(), student)


results = Results(
    "Alignment loss, CPU, fp32",
    [
        "Medians of interleaved rounds (every contender once per round, the order reversed every"
        " other round); speed-up = contender median / fused median.",
        f"K = {K}, G = {G}, r = {R}; fwd+bwd: gradient to the student (the teacher is frozen).",
        "GB/s: the least traffic the op needs (inputs read once, outputs written once; block_mse"
        " fwd+bwd: S and t read once, dS written once) over the fused time; copy: the main input"
        " (t for child_mse, S for block_mse) read and written, in the same rounds.",
        "Timed under glibc's steady state of a training loop (mmap threshold 32 MiB: smaller"
        " buffers are reused, bigger ones such as block_mse's dS are fresh mmaps whose page"
        " faults every contender pays); peaks (extra resident MB of one call) are measured with"
        " every allocation of 128 KiB or more a fresh mmap.",
        "sys ms / faults: kernel CPU time and minor page faults per fused call; load: 1-minute"
        " load average at the end of the case (2 cores; other jobs shared them).",
    ],
)
_peaks: list[str] = []


@pytest.mark.parametrize("mode", ["fwd", "fwd+bwd"])
@pytest.mark.parametrize("case", list(CASES))
def test_align_loss(case, mode):
    op, n, d = CASES[case]
    student, args, min_bytes, src = _inputs(op, n, d)
    fused = FUSED[op]
    contenders = {"fused": _step(fused, mode, student, args)}
    want_fwd = _step(FORMULATIONS[op][next(iter(FORMULATIONS[op]))], "fwd", student, args)()
    want_bwd = _step(FORMULATIONS[op][next(iter(FORMULATIONS[op]))], "fwd+bwd", student, args)()
    failed = {}
    for name, fn in FORMULATIONS[op].items():
        torch.testing.assert_close(_step(fn, "fwd", student, args)(), want_fwd, rtol=1e-4,
                                   atol=1e-6)  # fmt: skip
        contenders[f"eager {name}"] = _step(fn, mode, student, args)
        for dynamic in (False, True):
            label = f"compiled {'dynamic' if dynamic else 'static'} {name}"
            compiled = try_compile(fn, lambda c: _step(c, mode, student, args)(), dynamic=dynamic)
            if isinstance(compiled, str):
                failed[label] = compiled
                continue
            contenders[label] = _step(compiled, mode, student, args)
    torch.testing.assert_close(contenders["fused"](), want_fwd if mode == "fwd" else want_bwd,
                               rtol=1e-4, atol=1e-6)  # fmt: skip
    src = src.detach()
    dst = torch.empty_like(src)
    contenders["copy"] = lambda: dst.copy_(src)
    peaks = {name: peak_extra_bytes(fn) for name, fn in contenders.items() if name != "copy"}
    rounds = 7 if min_bytes["fwd+bwd"] > 2e8 else 15
    with _steady_state_malloc():
        timings = interleaved(contenders, rounds=rounds)
    results.add(f"{case} {mode}", timings, min_bytes[mode], 2 * src.nbytes, failed)
    _peaks.append(
        f"| {case} {mode} | "
        + " | ".join(f"{name} {peak / 2**20:.0f}" for name, peak in peaks.items())
        + " |"
    )


@pytest.fixture(scope="module", autouse=True)
def _write_results_at_end():
    yield
    if _peaks:
        results.tail += ["## Peak extra resident memory of one call (MB)", "",
                         "| case | per contender |", "|---|---|", *_peaks]  # fmt: skip
    results.write("align_loss_cpu")
