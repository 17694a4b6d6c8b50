"""MIL training throughput (bags/s): gated ABMIL on the fused pooling op vs the eager reference,
packed batches of several bags vs batch size 1 (CLAM's loader).

One "round" is a training epoch over 32 bags with lengths log-uniform in [50, 4000], D = 768,
L = 128: forward, cross-entropy, backward, AdamW step. Contenders:
- fused-packed8: lrmil.mil.GatedABMIL, 8 bags per batch (offsets);
- eager-packed8: the same model with the pooling replaced by the eager padded-and-masked batch;
- fused-bs1: the fused model, one bag per step;
- eager-bs1: the eager per-bag loop (CLAM-style), one bag per step.
Correctness (same logits and gradients as the eager model) is asserted first.

    .venv/bin/python -m pytest bench/test_mil.py -p no:cacheprovider \
        --benchmark-json bench/results/mil.json

writes bench/results/mil.md (bags/s and ratios).
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
from conftest import RESULTS, machine
from torch import nn

from lrmil.mil import GatedABMIL, pack
from lrmil.ops import reference

DIM, HIDDEN, N_BAGS = 768, 128, 32
SUMMARY_MD = RESULTS / "mil.md"
_medians: dict[str, float] = {}


def bag_lengths(seed: int = 0, low: int = 50, high: int = 4000) -> list[int]:
    gen = torch.Generator().manual_seed(seed)
    logs = torch.rand(N_BAGS, generator=gen) * (math.log(high) - math.log(low)) + math.log(low)
    return [int(v) for v in logs.exp()]


class EagerPool(nn.Module):
    """The same parameters as GatedAttentionPool, pooled by an eager reference."""

    def __init__(self, pool: nn.Module, how) -> None:
        super().__init__()
        self.gate, self.w, self.b_w, self.how = pool.gate, pool.w, pool.b_w, how

    def forward(self, x: torch.Tensor, offsets: torch.Tensor):
        pooled, attn, logits = self.how(self.gate(x), x, self.w, self.b_w, offsets)
        return pooled, attn, logits


@pytest.fixture(scope="module")
def data():
    gen = torch.Generator().manual_seed(1)
    bags = [torch.randn(n, DIM, generator=gen) for n in bag_lengths()]
    labels = torch.randint(0, 2, (N_BAGS,), generator=gen)
    return bags, labels


def make_model(kind: str) -> GatedABMIL:
    torch.manual_seed(0)
    model = GatedABMIL(DIM, 2, HIDDEN)
    if kind == "eager-packed8":
        model.pool = EagerPool(model.pool, reference.gated_attention_pool_padded)
    elif kind == "eager-bs1":
        model.pool = EagerPool(model.pool, reference.gated_attention_pool_loop)
    return model


def epoch(model: GatedABMIL, optimizer, bags, labels, batch: int) -> None:
    for start in range(0, len(bags), batch):
        x, offsets = pack(bags[start:start + batch])
        loss = nn.functional.cross_entropy(model(x, offsets).logits, labels[start:start + batch])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()


def test_fused_model_matches_eager(data):
    bags, labels = data
    fused, eager = make_model("fused-packed8"), make_model("eager-packed8")
    x, offsets = pack(bags[:8])
    out_f, out_e = fused(x, offsets).logits, eager(x, offsets).logits
    torch.testing.assert_close(out_f, out_e, rtol=1e-4, atol=1e-5)
    nn.functional.cross_entropy(out_f, labels[:8]).backward()
    nn.functional.cross_entropy(out_e, labels[:8]).backward()
    for (name, a), b in zip(fused.named_parameters(), eager.parameters(), strict=True):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-3, atol=1e-5, msg=name)


@pytest.mark.parametrize("kind, batch", [("fused-packed8", 8), ("eager-packed8", 8),
                                         ("fused-bs1", 1), ("eager-bs1", 1)])
def test_training_throughput(benchmark, data, kind, batch):
    bags, labels = data
    benchmark.group = "mil-train-epoch"
    model = make_model(kind)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    state = copy.deepcopy(optimizer.state_dict())
    benchmark.pedantic(epoch, args=(model, optimizer, bags, labels, batch), rounds=3,
                       warmup_rounds=1)
    optimizer.load_state_dict(state)
    _medians[kind] = benchmark.stats.stats.median
    benchmark.extra_info["bags_per_s"] = N_BAGS / benchmark.stats.stats.median


def test_write_summary():
    if len(_medians) < 4:
        pytest.skip("run the whole module to write the summary")
    lines = ["# MIL training throughput (gated ABMIL, fp32, CPU)", "",
             f"Machine: {machine()}.", "",
             f"One epoch over {N_BAGS} bags, lengths log-uniform in [50, 4000] "
             f"({sum(bag_lengths())} instances), D = {DIM}, L = {HIDDEN}: forward, CE, "
             "backward, AdamW. Median of 3 rounds.", "",
             "| contender | bags/s | vs eager-bs1 (CLAM) |", "|---|---|---|"]
    base = _medians["eager-bs1"]
    for kind, median in _medians.items():
        lines.append(f"| {kind} | {N_BAGS / median:.1f} | {base / median:.2f}x |")
    fused_vs_eager = _medians["eager-packed8"] / _medians["fused-packed8"]
    packed_vs_bs1 = _medians["fused-bs1"] / _medians["fused-packed8"]
    lines += ["", f"Fused vs eager, packed: {fused_vs_eager:.2f}x; packed vs batch size 1 "
              f"(fused): {packed_vs_bs1:.2f}x."]
    SUMMARY_MD.write_text("\n".join(lines) + "\n")
