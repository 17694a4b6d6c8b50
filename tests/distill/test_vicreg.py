"""VICReg's three terms against a hand computation (plain loops over rows and features)."""

import math

import numpy as np
import pytest
import torch

from lrmil.distill import load_config
from lrmil.distill.config import Stage1Config
from lrmil.distill.stage1 import Objective
from lrmil.distill.vicreg import EPS, Projector, vicreg_terms, weighted_children
from lrmil.errors import ConfigError


def hand_terms(a: np.ndarray, b: np.ndarray) -> tuple[float, float, float]:
    rows, width = a.shape
    inv = sum((a[i, e] - b[i, e]) ** 2 for i in range(rows) for e in range(width))
    inv /= rows * width

    def column_mean(z, e):
        return sum(z[i, e] for i in range(rows)) / rows

    def cov(z, e, f):  # unbiased, over the rows of the batch
        me, mf = column_mean(z, e), column_mean(z, f)
        return sum((z[i, e] - me) * (z[i, f] - mf) for i in range(rows)) / (rows - 1)

    var = 0.0
    for z in (a, b):
        var += sum(max(0.0, 1 - math.sqrt(cov(z, e, e) + EPS)) for e in range(width)) / width / 2
    covariance = 0.0
    for z in (a, b):
        covariance += sum(cov(z, e, f) ** 2 for e in range(width) for f in range(width)
                          if e != f) / width
    return inv, var, covariance


@pytest.mark.parametrize("rows", [2, 3, 7])
def test_the_three_terms_match_a_hand_computation(rows):
    rng = np.random.default_rng(rows)
    # Small scale so that some features' std is under 1 (the variance hinge is active) and
    # some over 1 (inactive).
    a = rng.normal(size=(rows, 5)) * np.array([0.1, 0.5, 2.0, 3.0, 0.9])
    b = rng.normal(size=(rows, 5)) * 0.7 + a
    terms = vicreg_terms(torch.tensor(a, dtype=torch.float32), torch.tensor(b, dtype=torch.float32))
    inv, var, cov = hand_terms(a, b)
    assert terms.invariance.item() == pytest.approx(inv, rel=1e-5)
    assert terms.variance.item() == pytest.approx(var, rel=1e-5)
    assert terms.covariance.item() == pytest.approx(cov, rel=1e-4)
    assert terms.loss(25, 25, 1).item() == pytest.approx(25 * inv + 25 * var + cov, rel=1e-4)


def test_a_batch_of_one_row_is_refused_and_skipped():
    with pytest.raises(ValueError, match="at least 2 rows"):
        vicreg_terms(torch.ones(1, 3), torch.ones(1, 3))
    objective = Objective(Stage1Config(objective="vicreg", vicreg_projector=[4, 3]), 3,
                          torch.device("cpu"))
    assert not objective.takes(1) and objective.takes(2)
    assert Objective(Stage1Config(), 3, torch.device("cpu")).takes(1)  # mse: any batch
    with pytest.raises(ConfigError, match="batch_patches >= 2"):
        load_config(overrides=["stage1.objective=vicreg", "stage1.batch_patches=1"])
    with pytest.raises(ConfigError, match="stage1.objective must be 'mse' or 'vicreg'"):
        load_config(overrides=["stage1.objective=simclr"])
    with pytest.raises(ConfigError, match="vicreg_projector must list one or more widths"):
        load_config(overrides=["stage1.objective=vicreg", "stage1.vicreg_projector=[]"])
    with pytest.raises(ConfigError, match=r"stage1.vicreg_projector must be >= 1, got 0"):
        load_config(overrides=["stage1.vicreg_projector=[8,0]"])


def test_ragged_children_are_averaged_over_the_valid_ones_only():
    # Three LR patches with 1, 4 and 2 valid children of K = 4; invalid children hold garbage
    # that must not count.
    rng = np.random.default_rng(0)
    t = rng.normal(size=(3, 4, 2)).astype(np.float32)
    valid = np.array([[1, 0, 0, 0], [1, 1, 1, 1], [0, 1, 0, 1]], bool)
    logits = rng.normal(size=(3, 4)).astype(np.float32)
    weight = torch.softmax(torch.tensor(np.where(valid, logits, -np.inf)), dim=1)
    mean = weighted_children(torch.tensor(t), weight).numpy()
    for i in range(3):
        ks = np.nonzero(valid[i])[0]
        w = np.exp(logits[i, ks]) / np.exp(logits[i, ks]).sum()
        np.testing.assert_allclose(mean[i], (w[:, None] * t[i, ks]).sum(0), rtol=1e-5)


def test_the_objective_projects_both_sides_and_trains_the_projector():
    torch.manual_seed(0)
    cfg = Stage1Config(objective="vicreg", vicreg_projector=[6, 4])
    objective = Objective(cfg, 3, torch.device("cpu"))
    s = torch.randn(5, 3, requires_grad=True)
    t, weight = torch.randn(5, 2, 3), torch.full((5, 2), 0.5)
    loss = objective(s, t, weight)
    projector: Projector = objective.projector
    expected = vicreg_terms(projector(s), projector(weighted_children(t, weight))).loss(25, 25, 1)
    torch.testing.assert_close(loss, expected)
    loss.backward()
    assert s.grad is not None and all(p.grad is not None for p in objective.parameters())
    assert [m.__class__.__name__ for m in projector.net] == ["Linear", "BatchNorm1d", "ReLU",
                                                             "Linear"]
