import pytest
import torch

from lrmil.mil import Bag, GatedABMIL, InputStats, collate, pack
from lrmil.ops import reference


def test_pack_offsets_and_collate():
    bags = [Bag("a", torch.arange(12.0).reshape(3, 4), 1), Bag("b", torch.zeros(0, 4), 0),
            Bag("c", torch.ones(2, 4), 0)]
    x, offsets = pack([b.features for b in bags])
    assert x.shape == (5, 4)
    assert offsets.tolist() == [0, 3, 3, 5]
    batch = collate(bags)
    assert batch.names == ["a", "b", "c"] and batch.labels.tolist() == [1, 0, 0]
    assert torch.equal(batch.x, x) and torch.equal(batch.offsets, offsets)
    moved = batch.to("cpu")
    assert moved is not batch and torch.equal(moved.x, x) and moved.names == batch.names


def test_input_stats_bag_by_bag_equal_those_of_the_whole_set():
    torch.manual_seed(0)
    bags = [torch.randn(n, 5) * 3 + 7 for n in (1, 40, 0, 17, 300)]
    stats = InputStats()
    for bag in bags:
        stats.add(bag)
    whole = torch.cat(bags).double()
    assert stats.count == len(whole)
    torch.testing.assert_close(stats.mean, whole.mean(0).float())
    torch.testing.assert_close(stats.std, whole.std(0).float())
    with pytest.raises(ValueError, match="at least two"):
        lone = InputStats()
        lone.add(torch.ones(1, 5))
        _ = lone.std


@pytest.mark.parametrize("proj_dim", [None, 6])
def test_forward_matches_the_definition(proj_dim):
    torch.manual_seed(0)
    model = GatedABMIL(5, 3, hidden=4, proj_dim=proj_dim, instance_head=True).eval()
    bags = [torch.randn(4, 5), torch.randn(7, 5)]
    x, offsets = pack(bags)
    out = model(x, offsets)
    assert out.logits.shape == (2, 3) and out.attn.shape == (11,)
    assert out.inst_logits.shape == (11, 2)
    for b, bag in enumerate(bags):
        h = model.project(bag)
        sl = slice(int(offsets[b]), int(offsets[b + 1]))
        e = out.attn_logits[sl]
        proj = model.pool.gate(h)  # e follows method.md's formula
        assert torch.allclose(e, reference.gate_logits(proj, model.pool.w, model.pool.b_w),
                              atol=1e-5)
        a = torch.softmax(e, 0)
        assert torch.allclose(out.attn[sl], a, atol=1e-6)
        z = a @ h
        assert torch.allclose(out.logits[b], model.classifier(z), atol=1e-5)


def test_packed_batch_equals_bags_one_by_one():
    torch.manual_seed(1)
    model = GatedABMIL(8, 2, hidden=16).eval()
    bags = [torch.randn(n, 8) for n in (1, 9, 4)]
    x, offsets = pack(bags)
    together = model(x, offsets).logits
    alone = torch.cat([model(b, torch.tensor([0, len(b)])).logits for b in bags])
    assert torch.allclose(together, alone, atol=1e-5)


def test_gradients_reach_every_parameter():
    model = GatedABMIL(6, 2, hidden=8, proj_dim=4, instance_head=True)
    x, offsets = pack([torch.randn(5, 6), torch.randn(3, 6)])
    out = model(x, offsets)
    (out.logits.sum() + out.inst_logits.sum()).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


def test_input_standardisation():
    model = GatedABMIL(3, 2, hidden=4).eval()
    x = torch.randn(20, 3) * torch.tensor([100.0, 1.0, 0.01]) + 5
    offsets = torch.tensor([0, 20])
    before = model(x, offsets).logits
    stats = InputStats()
    stats.add(x)
    model.set_input_stats(stats)
    h = (x - x.mean(0)) / x.std(0)
    torch.testing.assert_close(model.in_mean, x.mean(0))
    after = model(x, offsets)
    assert not torch.allclose(before, after.logits)
    z = torch.softmax(after.attn_logits, 0) @ h
    torch.testing.assert_close(after.logits[0], model.classifier(z))


def test_hparams_round_trip():
    model = GatedABMIL(6, 4, hidden=8, proj_dim=5, instance_head=True)
    clone = GatedABMIL.from_hparams(model.hparams())
    clone.load_state_dict(model.state_dict())
    assert clone.hparams() == model.hparams()
