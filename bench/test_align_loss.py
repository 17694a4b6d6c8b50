"""Benchmarks of the fused alignment loss (performance.md, "Kernels").

Contenders per shape: the fused op, the eager reference, torch.compile of the reference, and a
memory copy of the op's main input (the bandwidth yardstick, measured in the same run).
Forward alone and forward+backward (gradient to the student; the teacher is frozen as in
stage 1, so t does not require grad). Correctness is asserted before timing. Peak extra memory
per call is read from the process's resident-set high-water mark (Linux /proc), which sees every
allocation: bench/conftest.py makes each allocation of 128 KiB or more a fresh mmap for that.

Timing runs under glibc's steady state in a training loop instead: glibc raises its mmap
threshold to the largest block freed so far (at most 32 MiB on 64-bit), so after the first step
buffers below 32 MiB come back from the heap without page faults, while bigger ones (block_mse's
(N, G, G, D) gradient) are fresh mmaps, page faults included, for every contender alike. Timing
under conftest's fresh-page policy instead charged each (N, D) buffer its page faults (a
first-touch 8 MiB buffer costs about as much as reading 60 MiB here), which a training loop does
not pay.

    .venv/bin/python -m pytest bench/test_align_loss.py \
        --benchmark-json bench/results/align_loss_cpu.json

writes a markdown summary of the ratios to bench/results/align_loss_cpu.md. On a busy machine,
wall-clock times of small shapes mostly measure thread wake-ups; a single-threaded run timed in
CPU time is far steadier and goes to align_loss_cpu_1thread.md:

    OMP_NUM_THREADS=1 .venv/bin/python -m pytest bench/test_align_loss.py \
        --benchmark-timer time.thread_time \
        --benchmark-json bench/results/align_loss_cpu_1thread.json
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import platform
import time

import pytest
import torch
from conftest import RESULTS, peak_extra_bytes

from lrmil.ops import block_mse, child_mse
from lrmil.ops import reference as ref

K, G, R = 16, 16, 4
CHILD_SHAPES = [(n, d) for n in (256, 2048) for d in (512, 768, 1024)]
BLOCK_SHAPES = [(256, 512), (256, 768), (256, 1024), (2048, 512)]
CONTENDERS = ["fused", "eager", "compiled", "copy"]
MODES = ["fwd", "fwd+bwd"]

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_GLIBC_MAX_MMAP_THRESHOLD = 32 * 2**20  # DEFAULT_MMAP_THRESHOLD_MAX on 64-bit
_FRESH_PAGES = 128 * 1024  # bench/conftest.py's policy


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


_best: dict[tuple[str, str], float] = {}  # (group, contender) -> fastest round, seconds
_peaks: dict[tuple[str, str], float] = {}  # (group, contender) -> peak extra bytes
_bytes: dict[str, int] = {}  # group -> minimal bytes moved by the fused op

for _name in ("recompile_limit", "cache_size_limit"):  # one compiled graph per shape and mode
    if hasattr(torch._dynamo.config, _name):
        setattr(torch._dynamo.config, _name, 64)


def _inputs(op: str, n: int, d: int):
    """(student, op args, {mode: bytes the op must move at the least})."""
    g = torch.Generator().manual_seed(0)
    t = torch.randn(n, K, d, generator=g)
    if op == "child":
        s = torch.randn(n, d, generator=g, requires_grad=True)
        w = torch.rand(n, K, generator=g)
        # fwd (no grad): read t and s; fwd+bwd also writes tbar, then reads s and tbar and
        # writes ds.
        fwd = (t.numel() + s.numel()) * 4
        return s, (s, t, w), {"fwd": fwd, "fwd+bwd": fwd + 4 * s.numel() * 4}
    grid = torch.randn(n, G, G, d, generator=g, requires_grad=True)
    valid = torch.rand(n, K, generator=g) > 0.2
    # fwd: read S and t; fwd+bwd: read S and t, write dS (an ideal fused pair; ours reads S twice).
    fwd = (grid.numel() + t.numel()) * 4
    return grid, (grid, t, valid, R), {"fwd": fwd, "fwd+bwd": fwd + grid.numel() * 4}


def _call(op: str, contender: str, mode: str, student, args):
    fns = {"child": (child_mse, ref.child_mse), "block": (block_mse, ref.block_mse)}[op]
    fn = fns[0] if contender == "fused" else fns[1]
    if contender == "compiled":
        fn = torch.compile(fn, dynamic=False)
    if mode == "fwd":

        def forward():
            with torch.no_grad():
                return fn(*args)

        return forward
    return lambda: torch.autograd.grad(fn(*args).sum(), student)


def _params():
    for op, shapes in (("child", CHILD_SHAPES), ("block", BLOCK_SHAPES)):
        for n, d in shapes:
            for mode in MODES:
                for contender in CONTENDERS:
                    yield pytest.param(
                        op, n, d, mode, contender, id=f"{op}-N{n}-D{d}-{mode}-{contender}"
                    )


@pytest.mark.parametrize(("op", "n", "d", "mode", "contender"), list(_params()))
def test_align_loss(benchmark, op, n, d, mode, contender):
    group = f"{op}_mse N={n} K={K} D={d}" + (f" G={G}" if op == "block" else "") + f" {mode}"
    benchmark.group = group
    student, args, min_bytes = _inputs(op, n, d)
    if contender == "copy":
        src = (args[1] if op == "child" else args[0]).detach()
        dst = torch.empty_like(src)
        run = lambda: dst.copy_(src)  # noqa: E731
        moved = 2 * src.numel() * 4
    else:
        run = _call(op, contender, mode, student, args)
        if contender == "fused":
            fused = _call(op, "fused", "fwd+bwd", student, args)()
            want = _call(op, "eager", "fwd+bwd", student, args)()
            torch.testing.assert_close(fused, want, rtol=1e-4, atol=1e-6)
            torch.testing.assert_close(
                _call(op, "fused", "fwd", student, args)(),
                _call(op, "eager", "fwd", student, args)(),
                rtol=1e-4,
                atol=1e-6,
            )
        run()  # warm up (and compile) outside the timing
        _peaks[group, contender] = peak_extra_bytes(run)
    rounds = int(min(15, max(3, 2e9 / min_bytes["fwd+bwd"])))
    with _steady_state_malloc():
        benchmark.pedantic(run, rounds=rounds, iterations=1, warmup_rounds=1)
    _best[group, contender] = benchmark.stats.stats.min
    if contender == "fused":
        _bytes[group] = min_bytes[mode]
    elif contender == "copy":
        _bytes[group + " copy"] = moved


@pytest.fixture(scope="module", autouse=True)
def _write_summary(request):
    start, load_start = time.time(), os.getloadavg()[0]
    yield
    groups = sorted({g for g, _ in _best}, key=lambda g: (g.split()[0], g))
    load = os.getloadavg()
    timer = request.config.getoption("benchmark_timer", None)
    timer_name = getattr(timer, "__name__", str(timer))
    threads = torch.get_num_threads()
    lines = [
        "# Alignment loss on the CPU (fp32)",
        "",
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"torch {torch.__version__}, {threads} threads, timer {timer_name}. Load average "
        f"{load_start:.1f} at the start, {load[0]:.1f} at the end (other processes shared "
        "the cores). "
        f"Run took {time.time() - start:.0f} s. Timed under glibc's steady state in a training "
        "loop (mmap threshold 32 MiB): buffers below 32 MiB are reused from the heap, bigger "
        "ones (block_mse's dS) are fresh mmaps whose page faults every contender pays. Peaks "
        "are measured with every allocation of 128 KiB or more a fresh mmap "
        "(bench/conftest.py).",
        "",
        "Times are the fastest of several rounds (the least disturbed by the other processes; "
        "medians are in the JSON). Speed-up = contender time / fused time (higher is better "
        "for the fused op). "
        "GB/s: the least traffic the op needs (inputs read once, outputs written once; for "
        "block_mse fwd+bwd: S and t read once, dS written once, although the fused backward "
        "reads S again) over the fused time, next to a copy of the main input (t for "
        "child_mse, S for block_mse) in the same run; the copy writes into a preallocated "
        "buffer, while the ops allocate their outputs. "
        "Peak = extra resident memory during one "
        "call (MB).",
        "",
        "| case | fused ms | vs eager | vs compile | fused GB/s | copy GB/s "
        "| peak fused MB | peak eager MB | peak compile MB |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for g in groups:
        fused = _best.get((g, "fused"))
        if fused is None:
            continue

        def ratio(c, g=g, fused=fused):
            return f"{_best[g, c] / fused:.2f}x" if (g, c) in _best else "-"

        def peak(c, g=g):
            return f"{_peaks[g, c] / 2**20:.0f}" if (g, c) in _peaks else "-"

        copy = _best.get((g, "copy"))
        copy_gbs = f"{_bytes[g + ' copy'] / copy / 1e9:.1f}" if copy else "-"
        lines.append(
            f"| {g} | {fused * 1e3:.1f} | {ratio('eager')} | {ratio('compiled')} "
            f"| {_bytes[g] / fused / 1e9:.1f} | {copy_gbs} "
            f"| {peak('fused')} | {peak('eager')} | {peak('compiled')} |"
        )
    RESULTS.mkdir(parents=True, exist_ok=True)
    name = "align_loss_cpu.md" if threads > 1 else "align_loss_cpu_1thread.md"
    (RESULTS / name).write_text("\n".join(lines) + "\n")
