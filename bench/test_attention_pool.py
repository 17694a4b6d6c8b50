"""Benchmarks of fused gated attention pooling (performance.md, "Kernels").

Two parts:
- the fused part (gate + ragged softmax + pooling, given proj), forward alone and
  forward+backward (gradients to proj, x, w and b_w): the fused op against every formulation a
  skilled user would write - segment reductions over the packed rows (lrmil.ops.reference), a
  padded batch with a mask, the CLAM-style per-bag loop - each eager and each under
  torch.compile with static and with dynamic shapes, and a copy of x (the bandwidth yardstick).
  All contenders of a case are timed interleaved (bench/conftest.py), so the ratios compare
  calls made side by side, under the same load.
- the whole layer (projection GEMM included), one training step: GatedAttentionPool against the
  same Linear followed by the eager padded or per-bag pooling (x = cached features, no
  gradient), with the peak resident memory of one step.
Correctness is asserted before anything is timed.

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python -m pytest bench/test_attention_pool.py \
        -p no:cacheprovider

writes bench/results/attention_pool_cpu.md and .json at the end of the module (the lrmil CLI
sets OMP_WAIT_POLICY=PASSIVE too; libgomp's default spin-waiting costs tens of ms per call on
shared cores).
"""

from __future__ import annotations

import math

import pytest
import torch
from conftest import Results, interleaved, peak_extra_bytes, try_compile

from lrmil.ops import GatedAttentionPool, gated_attention_pool, reference
from lrmil.testing import assert_close_report, attention_pool_inputs

HIDDEN = 128


def log_uniform_lengths(n_bags: int, seed: int, low: int = 50, high: int = 20000) -> list[int]:
    gen = torch.Generator().manual_seed(seed)
    logs = torch.rand(n_bags, generator=gen) * (math.log(high) - math.log(low)) + math.log(low)
    return [int(v) for v in logs.exp()]


# case -> bag lengths, D (MIL shapes: ragged batches and a single long bag)
SHAPES = {
    "ragged16-d768": (log_uniform_lengths(16, seed=0), 768),
    "ragged8-d1536": (log_uniform_lengths(8, seed=1), 1536),
    "bag100k-d512": ([100_000], 512),
}
LAYER_SHAPES = {
    "layer-ragged16-d768": SHAPES["ragged16-d768"],
    "layer-ragged32-d1024": (log_uniform_lengths(32, seed=2), 1024),
}
for _name in ("recompile_limit", "cache_size_limit"):  # one graph per case, mode and option
    if hasattr(torch._dynamo.config, _name):
        setattr(torch._dynamo.config, _name, 64)


# Each formulation takes (proj, x, w, b_w, offsets, extra): extra is what a data loader knows
# as Python numbers (the longest bag, the bag bounds), constants under static compilation and
# symbolic sizes under dynamic compilation.
def _segment(proj, x, w, b_w, offsets, extra):
    return reference.gated_attention_pool(proj, x, w, b_w, offsets)


def _padded(proj, x, w, b_w, offsets, longest):
    return reference.gated_attention_pool_padded(proj, x, w, b_w, offsets, longest)


def _loop(proj, x, w, b_w, offsets, bounds):
    return reference.gated_attention_pool_loop(proj, x, w, b_w, offsets, bounds)


FORMULATIONS = {"segment": _segment, "padded": _padded, "loop": _loop}


def extra_for(name: str, lengths: list[int]):
    bounds = tuple(int(v) for v in torch.tensor([0, *lengths]).cumsum(0))
    return {"segment": None, "padded": max(lengths), "loop": bounds}[name]


def make_step(fn, inputs, extra, backward: bool):
    proj, x, w, b_w, offsets = inputs
    if not backward:

        def forward():
            with torch.no_grad():
                return fn(proj, x, w, b_w, offsets, extra)

        return forward
    leaves = [t.detach().requires_grad_() for t in (proj, x, w, b_w)]

    def step():
        for t in leaves:
            t.grad = None
        pooled, attn, logits = fn(*leaves, offsets, extra)
        (pooled.sum() + attn.sum() + logits.sum()).backward()
        return pooled

    return step


def moved_bytes(inputs, backward: bool) -> int:
    """The least memory the fused op must move: proj and x read (forward); backward reads both
    again and writes their gradients."""
    once = inputs[0].nbytes + inputs[1].nbytes
    return 4 * once if backward else once


results = Results(
    "Gated attention pooling, CPU, fp32",
    [
        "Medians of interleaved rounds (every contender once per round, the order reversed every"
        " other round); speed-up = contender median / fused median.",
        "Contenders: `eager`/`compiled static`/`compiled dynamic` of segment reductions (the"
        " package's reference), a padded batch with mask (gathered, bmm) and the CLAM-style"
        " per-bag loop (bounds known to the loader, unrolled by torch.compile).",
        f"L = {HIDDEN}; ragged lengths log-uniform in [50, 20000]; fwd+bwd gives gradients to"
        " proj, x, w, b_w. GB/s: proj + x read once (fwd); read twice and their gradients"
        " written (fwd+bwd), over the fused time; copy: x read and written.",
        "sys ms / faults: kernel CPU time and minor page faults per fused call (first touch of"
        " freshly allocated outputs); load: 1-minute load average at the end of the case"
        " (2 cores; other jobs shared them).",
    ],
)


@pytest.mark.parametrize("mode", ["fwd", "fwd+bwd"])
@pytest.mark.parametrize("case", list(SHAPES))
def test_fused_part(case, mode):
    lengths, dim = SHAPES[case]
    inputs = attention_pool_inputs(lengths, dim, hidden=HIDDEN)
    backward = mode == "fwd+bwd"
    want = reference.gated_attention_pool(*inputs)
    contenders = {"fused": make_step(lambda p, x, w, b, o, _: gated_attention_pool(p, x, w, b, o),
                                     inputs, None, backward)}  # fmt: skip
    failed = {}
    for name, fn in FORMULATIONS.items():
        extra = extra_for(name, lengths)
        for got, ref in zip(fn(*inputs, extra), want, strict=True):  # correctness first
            assert_close_report(got, ref, rtol=1e-4, atol=1e-5, name=name)
        contenders[f"eager {name}"] = make_step(fn, inputs, extra, backward)
        for dynamic in (False, True):
            label = f"compiled {'dynamic' if dynamic else 'static'} {name}"
            compiled = try_compile(
                fn, lambda c, e=extra: make_step(c, inputs, e, backward)(), dynamic=dynamic
            )
            if isinstance(compiled, str):
                failed[label] = compiled
                continue
            contenders[label] = make_step(compiled, inputs, extra, backward)
    for got, ref in zip(gated_attention_pool(*inputs), want, strict=True):
        assert_close_report(got, ref, rtol=1e-4, atol=1e-5, name="fused")
    x = inputs[1]
    copy_out = torch.empty_like(x)
    contenders["copy"] = lambda: copy_out.copy_(x)
    rounds = 5 if case.startswith("bag100k") else 7
    timings = interleaved(contenders, rounds=rounds)
    results.add(f"{case} {mode}", timings, moved_bytes(inputs, backward), 2 * x.nbytes, failed)


class EagerLayer(torch.nn.Module):
    """The same parameters as GatedAttentionPool, pooled by an eager reference."""

    def __init__(self, fused: GatedAttentionPool, pool) -> None:
        super().__init__()
        self.fused, self.pool = fused, pool

    def forward(self, x, offsets):
        f = self.fused
        return self.pool(f.gate(x), x, f.w, f.b_w, offsets)


layer_rows: list[str] = []


@pytest.mark.parametrize("case", list(LAYER_SHAPES))
def test_layer_training_step(case):
    lengths, dim = LAYER_SHAPES[case]
    torch.manual_seed(0)
    fused = GatedAttentionPool(dim, HIDDEN)
    layers = {
        "fused": fused,
        "padded": EagerLayer(fused, reference.gated_attention_pool_padded),
        "loop": EagerLayer(fused, reference.gated_attention_pool_loop),
    }
    x = torch.randn(sum(lengths), dim)
    offsets = torch.tensor([0, *lengths]).cumsum(0)
    with torch.no_grad():
        want = EagerLayer(fused, reference.gated_attention_pool)(x, offsets)
        for name, layer in layers.items():
            for got, ref in zip(layer(x, offsets), want, strict=True):
                assert_close_report(got, ref, rtol=1e-4, atol=1e-5, name=name)

    def step_of(layer):
        def step():
            fused.zero_grad(set_to_none=True)
            pooled, attn, _ = layer(x, offsets)
            (pooled.square().sum() + attn.sum()).backward()

        return step

    steps = {name: step_of(layer) for name, layer in layers.items()}
    peaks = {}
    for name, step in steps.items():
        step()
        peaks[name] = peak_extra_bytes(step)
    t = interleaved(steps, rounds=3)
    fused_t = t["fused"].median
    mib = {name: f"{peak / 2**20:.0f}" for name, peak in peaks.items()}
    layer_rows.append(
        f"| {case} | {fused_t * 1e3:.1f} | {t['padded'].median / fused_t:.2f}x | "
        f"{t['loop'].median / fused_t:.2f}x | {mib['fused']} | {mib['padded']} | {mib['loop']} | "
        f"{peaks['fused'] / min(peaks['padded'], peaks['loop']):.2f}x | {t['fused'].load:.1f} |"
    )


@pytest.fixture(scope="module", autouse=True)
def _write_results_at_end():
    yield
    if layer_rows:
        results.tail += [
            "## Whole layer, one training step (projection GEMM + pooling, fwd + bwd)",
            "",
            "x is cached features (no gradient); medians of 3 interleaved rounds; peak = extra"
            " resident memory of one step.",
            "",
            "| case | fused ms | vs padded | vs loop | fused peak MiB | padded peak MiB "
            "| loop peak MiB | fused peak / smaller eager peak | load |",
            "|---|---|---|---|---|---|---|---|---|",
            *layer_rows,
        ]
    results.write("attention_pool_cpu")
