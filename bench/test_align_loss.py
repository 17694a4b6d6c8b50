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
results). block_mse's forward+backward cases run a second time with every buffer reused from
the heap (glibc's mmap off, as with a caching allocator such as jemalloc or tcmalloc): the
kernels' own times, without the first touch of a fresh gradient that dominates the first run.

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

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_MMAP_MAX = -1, -3, -4
_GLIBC_MAX_MMAP_THRESHOLD = 32 * 2**20  # DEFAULT_MMAP_THRESHOLD_MAX on 64-bit
_FRESH_PAGES = 128 * 1024  # bench/conftest.py's policy
_GLIBC_MMAP_MAX = 65536  # glibc's default M_MMAP_MAX
_INT_MAX = 2**31 - 1  # mallopt takes a C int: a bigger value wraps (2**62 would give 0)
# Read before every timed call: no contender inherits inputs left in the caches by the one before
# it (the eager broadcast's (N, K, D) temporaries evict t, and the contender after it read t
# from memory: at N = 256 the fused op took 1.9 ms after it, 0.9 ms after itself).
_EVICT_BYTES = 128 * 2**20

for _name in ("recompile_limit", "cache_size_limit"):  # one graph per case, mode and option
    if hasattr(torch._dynamo.config, _name):
        setattr(torch._dynamo.config, _name, 64)


@contextlib.contextmanager
def _timing_malloc(reuse: bool):
    """glibc's allocator as a training loop sees it (module docstring); with reuse, every block
    comes from the heap and stays there (no mmap, no trimming). conftest's fresh-page policy is
    restored afterwards and the heap given back, for the next peak measurement."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc: time under the platform's allocator as it is
        yield
        return
    libc.mallopt(_M_MMAP_THRESHOLD, _GLIBC_MAX_MMAP_THRESHOLD)
    libc.mallopt(_M_TRIM_THRESHOLD, _INT_MAX if reuse else 2 * _GLIBC_MAX_MMAP_THRESHOLD)
    if reuse:
        libc.mallopt(_M_MMAP_MAX, 0)
    try:
        yield
    finally:
        libc.mallopt(_M_MMAP_MAX, _GLIBC_MMAP_MAX)
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
YARDSTICKS = ("copy", "new dS filled")


def _inputs(op: str, n: int, d: int):
    """(student, op args, {mode: bytes the op must move at the least}, copy source)."""
    g = torch.Generator().manual_seed(0)
    t = torch.randn(n, K, d, generator=g)
    if op == "child":
        s = torch.randn(n, d, generator=g, requires_grad=True)
        w = torch.rand(n, K, generator=g)
        # fwd (no grad): read t and s; fwd+bwd also writes an (N, D) residual for the backward,
        # which reads it back and writes ds.
        fwd = (t.numel() + s.numel()) * 4
        return s, (s, t, w), {"fwd": fwd, "fwd+bwd": fwd + 3 * s.numel() * 4}, t
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
        "GB/s: the least traffic the op needs (inputs read once, outputs written once; child_mse"
        " fwd+bwd: t and s read, an (N, D) residual written and read back, ds written; block_mse"
        " fwd+bwd: S and t read once, dS written once) over the fused time; copy: the main input"
        " (t for child_mse, S for block_mse) read and written, in the same rounds.",
        "Timed under glibc's steady state of a training loop (mmap threshold 32 MiB: smaller"
        " buffers are reused, bigger ones such as block_mse's dS are fresh mmaps whose page"
        " faults every contender pays); peaks (extra resident MB of one call) are measured with"
        " every allocation of 128 KiB or more a fresh mmap. 'buffers reused': block_mse again with"
        " glibc's mmap off, every buffer reused from the heap (no first touch for anyone).",
        "new dS filled: torch.empty_like(S).fill_(1), what producing an (N, G, G, D) gradient"
        " costs anyone without reading anything (its first touch included where pages are"
        " fresh).",
        "Every timed call starts with cold caches (128 MiB read first, untimed): inputs come"
        " from memory for every contender alike, whoever ran before it.",
        "sys ms / faults: kernel CPU time and minor page faults per fused call; load: 1-minute"
        " load average at the end of the case (2 cores; other jobs shared them).",
    ],
)
_peaks: list[str] = []


RUNS = [(case, mode, "") for case in CASES for mode in ("fwd", "fwd+bwd")] + [
    (case, "fwd+bwd", "reused") for case, (op, _, _) in CASES.items() if op == "block"
]


@pytest.mark.parametrize(("case", "mode", "alloc"), RUNS, ids=[" ".join(r).strip() for r in RUNS])
def test_align_loss(case, mode, alloc):
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
    if op == "block" and mode == "fwd+bwd":
        # What producing a new (N, G, G, D) gradient costs anyone (first touch included when
        # the allocator hands out fresh pages), without reading anything.
        contenders["new dS filled"] = lambda: torch.empty_like(src).fill_(1.0)
    peaks = (
        {name: peak_extra_bytes(fn) for name, fn in contenders.items() if name not in YARDSTICKS}
        if not alloc
        else {}
    )
    rounds = 7 if min_bytes["fwd+bwd"] > 2e8 else 15
    evict = torch.ones(_EVICT_BYTES // 4)
    with _timing_malloc(reuse=alloc == "reused"):
        timings = interleaved(contenders, rounds=rounds, before=evict.sum)
    label = f"{case} {mode}" + (", buffers reused" if alloc else "")
    results.add(label, timings, min_bytes[mode], 2 * src.nbytes, failed)
    if not alloc:
        _peaks.append(
            f"| {label} | "
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
