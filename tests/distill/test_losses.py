import math

import pytest
import torch

from lrmil.distill.losses import (
    attention_kd,
    instance_loss,
    logit_kd,
    map_attention,
    topk_instances,
)

INF = float("inf")


def test_map_attention_mean_and_max():
    parent = torch.tensor([0, 0, 1, 1, 1, 3])
    logits = torch.tensor([1.0, 3.0, 2.0, 4.0, 6.0, 7.0])
    assert map_attention(logits, parent, 5, "mean").tolist() == [2.0, 4.0, -INF, 7.0, -INF]
    assert map_attention(logits, parent, 5, "max").tolist() == [3.0, 6.0, -INF, 7.0, -INF]
    with pytest.raises(ValueError, match="mean' or 'max"):
        map_attention(logits, parent, 5, "median")


def test_logit_kd_by_hand():
    teacher = torch.tensor([[0.0, 0.0]])
    student = torch.tensor([[0.0, math.log(3.0)]])
    # p = (1/2, 1/2), q = (1/4, 3/4): KL = 1/2 ln 2 + 1/2 ln(2/3) = 1/2 ln(4/3)
    assert float(logit_kd(student, teacher, 1.0)) == pytest.approx(0.5 * math.log(4 / 3))
    # T = 2: q = softmax(0, ln3 / 2) = (1, sqrt3) / (1 + sqrt3), times T^2 = 4
    s3 = math.sqrt(3)
    kl = 0.5 * math.log(0.5 * (1 + s3)) + 0.5 * math.log(0.5 * (1 + s3) / s3)
    assert float(logit_kd(student, teacher, 2.0)) == pytest.approx(4 * kl)
    assert float(logit_kd(teacher, teacher, 2.0)) == pytest.approx(0.0, abs=1e-7)


def test_attention_kd_by_hand():
    # Bag 0: g = (0, 0, -inf) -> p = (1/2, 1/2, 0); e = (0, ln 2, 5) -> q = (1, 2, e^5) / Z.
    # Bag 1: g = e -> KL = 0. The loss is the mean over the two bags.
    g = torch.tensor([0.0, 0.0, -INF, 1.0, 2.0])
    e = torch.tensor([0.0, math.log(2.0), 5.0, 1.0, 2.0])
    offsets = torch.tensor([0, 3, 5])
    z = 1 + 2 + math.exp(5)
    kl0 = 0.5 * math.log(0.5 * z) + 0.5 * math.log(0.5 * z / 2)
    assert float(attention_kd(e, g, offsets, 1.0)) == pytest.approx(kl0 / 2, rel=1e-5)
    # T = 2 scales the logits and multiplies by 4.
    z2 = 1 + math.sqrt(2) + math.exp(2.5)
    kl0_t2 = 0.5 * math.log(0.5 * z2) + 0.5 * math.log(0.5 * z2 / math.sqrt(2))
    assert float(attention_kd(e, g, offsets, 2.0)) == pytest.approx(4 * kl0_t2 / 2, rel=1e-5)


def test_attention_kd_gradient_is_finite_with_masked_patches():
    g = torch.tensor([0.0, -INF, 1.0])
    e = torch.zeros(3, requires_grad=True)
    attention_kd(e, g, torch.tensor([0, 3]), 1.0).backward()
    assert torch.isfinite(e.grad).all()
    # A bag with no teacher attention at all is skipped, not NaN.
    loss = attention_kd(torch.zeros(2), torch.full((2,), -INF), torch.tensor([0, 2]), 1.0)
    assert float(loss) == 0.0


def test_topk_selection_caps_k_at_half_the_finite_patches():
    g = torch.tensor([3.0, 1.0, 2.0, 0.0, -INF, 5.0, 4.0])
    index, labels = topk_instances(g, torch.tensor([0, 5, 7]), k=8)
    # bag 0: 4 finite -> k = 2, top (0, 2), bottom (1, 3); bag 1: k = 1, top 5, bottom 6
    assert index.tolist() == [0, 2, 1, 3, 5, 6]
    assert labels.tolist() == [1, 1, 0, 0, 1, 0]


def test_instance_loss_by_hand():
    g = torch.tensor([2.0, 1.0])  # patch 0 is top (label 1), patch 1 bottom (label 0)
    inst = torch.tensor([[0.0, math.log(3.0)], [0.0, math.log(3.0)]])
    # CE: -ln(3/4) for label 1, -ln(1/4) for label 0; mean
    expected = (-math.log(0.75) - math.log(0.25)) / 2
    assert float(instance_loss(inst, g, torch.tensor([0, 2]), k=4)) == pytest.approx(expected)
