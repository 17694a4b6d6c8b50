"""GPU timings for bench/gpu/run.sh: fused ops vs eager / compiled references and a device copy,
fwd and fwd+bwd, CUDA-event medians; results.json in the output folder. Usage: OUT SECONDS."""

# ruff: noqa: B023  (every lambda is timed before its loop moves on)
from __future__ import annotations

import json
import math
import statistics
import sys
import time

import torch

from lrmil.ops import block_mse, child_mse, gated_attention_pool, reference
from lrmil.testing import attention_pool_inputs

OUT, END = sys.argv[1], time.time() + float(sys.argv[2])
results: dict[str, str] = {}


def record(key: str, value: str) -> None:
    results[key] = value
    print(f"{key}: {value}", flush=True)
    with open(f"{OUT}/results.json", "w") as f:
        json.dump(results, f, indent=1)


def median_ms(fn, n: int = 20) -> float:
    for _ in range(3):
        fn()
    events = [
        (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
        for _ in range(n)
    ]
    torch.cuda.synchronize()
    for start, end in events:
        start.record()
        fn()
        end.record()
    torch.cuda.synchronize()
    return statistics.median(s.elapsed_time(e) for s, e in events)


def copy_gbps() -> float:
    src, dst = torch.empty(2**28, device="cuda"), torch.empty(2**28, device="cuda")
    return 2 * src.nbytes / median_ms(lambda: dst.copy_(src)) / 1e6


COPY = copy_gbps()
record("copy GB/s (read + write)", f"{COPY:.0f}")


def measure(key: str, fn, nbytes: int) -> None:  # fn runs here, before its loop moves on
    if time.time() + 5 > END:
        return record(key, "SKIPPED (time)")
    try:
        ms = median_ms(fn)
        record(
            key,
            f"{ms:.3f} ms, {nbytes / ms / 1e6:.0f} GB/s = {nbytes / ms / 1e6 / COPY:.0%} of copy",
        )
    except Exception as exc:  # reported, the run goes on
        record(key, f"EXC {type(exc).__name__}: {str(exc)[:300]}")
    torch.cuda.empty_cache()


def lengths(n: int, seed: int) -> list[int]:
    g = torch.Generator().manual_seed(seed)
    return [int(v) for v in (torch.rand(n, generator=g) * math.log(400) + math.log(50)).exp()]


POOLS = {"fused": gated_attention_pool, "segment": reference.gated_attention_pool,
         "padded": reference.gated_attention_pool_padded}  # fmt: skip
for case, (lens, dim, dtype) in {
    "ragged16 D768 fp32": (lengths(16, 0), 768, torch.float32),
    "bag100k D512 fp32": ([100_000], 512, torch.float32),
    "bag100k D1536 bf16": ([100_000], 1536, torch.bfloat16),
    "tail 100k+63x50 D768 bf16": ([100_000] + [50] * 63, 768, torch.bfloat16),
}.items():
    inputs = [t.cuda() for t in attention_pool_inputs(lens, dim, hidden=128, dtype=dtype)]
    leaves = [t.detach().requires_grad_() if t.is_floating_point() else t for t in inputs]
    nbytes = inputs[0].nbytes + inputs[1].nbytes
    for name, fn in POOLS.items():
        measure(f"pool {case} fwd {name}", torch.no_grad()(lambda fn=fn: fn(*inputs)), nbytes)
        measure(f"pool {case} fwd+bwd {name}",
                lambda fn=fn: torch.autograd.grad(fn(*leaves)[0].float().sum(), leaves[:4]),
                4 * nbytes)  # fmt: skip

for dtype in (torch.float32, torch.bfloat16):
    s = torch.randn(4096, 768, device="cuda", dtype=dtype)
    t = torch.randn(4096, 16, 768, device="cuda", dtype=dtype)
    w = torch.rand(4096, 16, device="cuda")
    sg = s.clone().requires_grad_()
    for name, fn in (("fused", child_mse), ("eager", reference.child_mse)):
        measure(
            f"child_mse N4096 K16 D768 {dtype} fwd {name}",
            torch.no_grad()(lambda fn=fn: fn(s, t, w)),
            s.nbytes + t.nbytes,
        )
        measure(f"child_mse N4096 K16 D768 {dtype} fwd+bwd {name}",
                lambda fn=fn: torch.autograd.grad(fn(sg, t, w).sum(), sg),
                3 * s.nbytes + t.nbytes)  # fmt: skip
    for layout in ("NHWC", "NCHW-view"):
        S = torch.randn(64, 16, 16, 768, device="cuda", dtype=dtype)  # noqa: N816
        if layout != "NHWC":
            S = torch.randn(64, 768, 16, 16, device="cuda", dtype=dtype).permute(0, 2, 3, 1)  # noqa: N816
        t2, valid = (
            torch.randn(64, 16, 768, device="cuda", dtype=dtype),
            torch.rand(64, 16, device="cuda") > 0.3,
        )
        Sg = S.detach().requires_grad_()  # noqa: N816
        for name, fn in (("fused", block_mse), ("eager", reference.block_mse)):
            measure(
                f"block_mse N64 G16 D768 {layout} {dtype} fwd {name}",
                torch.no_grad()(lambda fn=fn: fn(S, t2, valid, 4)),
                S.nbytes + t2.nbytes,
            )
            measure(f"block_mse N64 G16 D768 {layout} {dtype} fwd+bwd {name}",
                    lambda fn=fn: torch.autograd.grad(fn(Sg, t2, valid, 4).sum(), Sg),
                    2 * S.nbytes + t2.nbytes)  # fmt: skip
