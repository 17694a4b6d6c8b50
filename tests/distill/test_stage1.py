import math

import numpy as np
import pytest
import torch

from lrmil.distill.stage1 import Adapter, Group, SlideTargets, child_table


def _slide(name, parent, child, hr, attn, n_lr):
    rows, children = child_table(np.array(parent), np.array(child), n_lr, k=4)
    return SlideTargets(name, rows, children, np.array(attn, np.float32), hr,
                        np.arange(n_lr * 3, dtype=np.float16).reshape(n_lr, 3),
                        {"stage1": hr * 10})


def test_targets_place_children_and_weigh_them_by_teacher_attention():
    # Slide a: 3 LR patches, r = 2 (K = 4); patch 1 has no valid child and is no training row.
    hr = np.arange(10, dtype=np.float16).reshape(5, 2)
    a = _slide("a", [0, 0, 2, 2, 2], [0, 3, 1, 2, 3], hr, [0.0, math.log(3.0), 1, 1, 1], 3)
    b = _slide("b", [1], [2], np.full((1, 2), 7, np.float16), [5.0], 2)
    assert a.rows.tolist() == [0, 2] and b.rows.tolist() == [1]
    assert a.children.tolist() == [[0, -1, -1, 1], [-1, 2, 3, 4]]
    group = Group([a, b])
    assert len(group) == 3
    t = group.batch(np.array([2, 1, 0]))  # b's row, then a's second and first rows
    assert t.valid.tolist() == [[False, False, True, False], [False, True, True, True],
                                [True, False, False, True]]
    assert t.t.dtype == torch.float32 and t.t.shape == (3, 4, 2)
    assert torch.equal(t.t[2, 3], torch.tensor([2.0, 3.0]))
    assert torch.equal(t.t[0, 2], torch.full((2,), 7.0))
    assert torch.equal(t.t[2, 1], torch.zeros(2))  # invalid children are zeros
    # softmax of the teacher's attention logits over the valid children only
    torch.testing.assert_close(t.weight[2], torch.tensor([0.25, 0.0, 0.0, 0.75]))
    torch.testing.assert_close(t.weight[1], torch.tensor([0.0, 1 / 3, 1 / 3, 1 / 3]))
    torch.testing.assert_close(t.weight[0], torch.tensor([0.0, 0.0, 1.0, 0.0]))
    assert torch.equal(t.layers["stage1"][1, 2], torch.tensor([60.0, 70.0]))
    # the adapter's input: the LR features of each row's patch
    assert t.lr.tolist() == [[3.0, 4.0, 5.0], [6.0, 7.0, 8.0], [0.0, 1.0, 2.0]]


def test_adapter_starts_as_the_identity_and_keeps_its_input():
    x = torch.randn(4, 8)
    torch.testing.assert_close(Adapter(8, 8, hidden=16).align(x), x)
    torch.testing.assert_close(Adapter(8, 8, hidden=16)(x), torch.cat([x, x], 1))
    adapter = Adapter(8, 5, hidden=16)
    assert adapter.align(x).shape == (4, 5)
    assert adapter(x).shape == (4, adapter.feature_dim) == (4, 13)
    torch.testing.assert_close(adapter(x)[:, :8], x)


def test_a_tiled_folder_without_coords_is_named_as_the_option(toy_features, tmp_path):
    from lrmil.distill.cohort import load_cohort
    from lrmil.distill.stage1 import slide_geometry
    from lrmil.errors import ConfigError

    cohort = load_cohort(toy_features, toy_features / "labels.csv")
    with pytest.raises(ConfigError, match=rf"^--tiled {tmp_path / 'nope'}: no coords/ folder"):
        slide_geometry(cohort, str(tmp_path / "nope"))
