import math

import numpy as np
import torch

from lrmil.distill.cohort import SlideFeatures
from lrmil.distill.stage1 import Adapter, child_targets


def test_child_targets_place_children_and_weigh_them_by_teacher_attention():
    # 3 LR patches, r = 2 (K = 4); patch 1 has no valid child and is dropped.
    parent = torch.tensor([0, 0, 2, 2, 2])
    child = torch.tensor([0, 3, 1, 2, 3])
    hr = torch.arange(10.0).reshape(5, 2)
    slide = SlideFeatures("s", 0, "p", torch.zeros(3, 2), np.zeros((3, 2)), hr, parent, child,
                          {"stage1": hr * 10})
    attn = torch.tensor([0.0, math.log(3.0), 1.0, 1.0, 1.0])
    t = child_targets(slide, attn, r=2, layers=["stage1"])
    assert t.row.tolist() == [0, 2]
    assert t.valid.tolist() == [[True, False, False, True], [False, True, True, True]]
    assert torch.equal(t.t[0, 3], hr[1]) and torch.equal(t.t[1, 1], hr[2])
    assert torch.equal(t.t[0, 1], torch.zeros(2))  # invalid children are zeros
    # softmax of the teacher's attention logits over the valid children only
    torch.testing.assert_close(t.weight[0], torch.tensor([0.25, 0.0, 0.0, 0.75]))
    torch.testing.assert_close(t.weight[1], torch.tensor([0.0, 1 / 3, 1 / 3, 1 / 3]))
    assert torch.equal(t.layers["stage1"][1, 2], hr[3] * 10)


def test_adapter_starts_as_the_identity_and_keeps_its_input():
    x = torch.randn(4, 8)
    torch.testing.assert_close(Adapter(8, 8, hidden=16).align(x), x)
    torch.testing.assert_close(Adapter(8, 8, hidden=16)(x), torch.cat([x, x], 1))
    adapter = Adapter(8, 5, hidden=16)
    assert adapter.align(x).shape == (4, 5)
    assert adapter(x).shape == (4, adapter.feature_dim) == (4, 13)
    torch.testing.assert_close(adapter(x)[:, :8], x)
