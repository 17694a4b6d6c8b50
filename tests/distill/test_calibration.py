"""Temperature scaling, ECE, Brier and the decision threshold on cases with known answers."""

import math

import numpy as np
import pytest
import torch

from lrmil.distill.calibration import (
    T_BOUNDS,
    brier,
    choose_threshold,
    decide,
    ece,
    fit_calibration,
    fit_temperature,
    softmax,
)


def test_temperature_has_the_closed_form_answer():
    """Logits (a, -a), the first class right for a share q of the slides: the NLL is least
    where sigmoid(2a / T) = q, at T = 2a / logit(q)."""
    a, q, n = 2.0, 0.8, 50
    logits = np.tile([a, -a], (n, 1))
    labels = np.r_[np.zeros(int(q * n), int), np.ones(n - int(q * n), int)]
    temperature, at_bound = fit_temperature(logits, labels)
    assert temperature == pytest.approx(2 * a / math.log(q / (1 - q)), rel=1e-4)
    assert not at_bound
    # probabilities after scaling say what happens: 0.8 for the class right 80% of the time
    assert softmax(logits, temperature)[0, 0] == pytest.approx(q, abs=1e-4)


def test_a_fit_at_the_bound_is_reported():
    """Confident logits right half the time: the best T is infinite, the search stops at 20."""
    logits = np.tile([5.0, -5.0], (10, 1))
    labels = np.r_[np.zeros(5, int), np.ones(5, int)]
    result = fit_calibration(logits, labels)
    assert result.at_bound and result.temperature == pytest.approx(T_BOUNDS[1], rel=1e-3)
    assert "bound" in result.note() and "over-confident" in result.note()


def test_ece_by_hand():
    probs = np.array([[.9, .1], [.92, .08], [.2, .8], [.3, .7], [.45, .55]])
    labels = np.array([0, 1, 0, 1, 1])
    # bins of width 1/15: .9 and .92 share (13/15, 14/15] (one right: accuracy .5, mean .91);
    # .8 is wrong, .7 right, .55 right, each alone in its bin
    want = (2 * abs(.5 - .91) + abs(0 - .8) + abs(1 - .7) + abs(1 - .55)) / 5
    assert ece(probs, labels) == pytest.approx(want)
    assert ece(np.array([[1.0, 0.0]]), np.array([0])) == 0.0  # confidence 1 is in the last bin


def test_brier_by_hand():
    probs = np.array([[.9, .1], [.4, .6]])
    assert brier(probs, np.array([0, 0])) == pytest.approx((.1 ** 2 + .6 ** 2) / 2)
    three = np.array([[.5, .3, .2]])
    assert brier(three, np.array([1])) == pytest.approx(.5 ** 2 + .7 ** 2 + .2 ** 2)


def test_threshold_maximises_balanced_accuracy_and_ties_go_nearest_one_half():
    p = np.array([.1, .2, .3, .6, .7, .9])
    labels = np.array([0, 0, 1, 0, 1, 1])
    # at .25 and at .65 the balanced accuracy is (1 + 2/3) / 2; .65 is nearer .5
    threshold, score = choose_threshold(p, labels)
    assert threshold == pytest.approx(.65) and score == pytest.approx(5 / 6)
    assert decide(np.array([[.4, .6], [.3, .7]]), threshold).tolist() == [0, 1]
    assert decide(np.array([[.4, .6]]), None).tolist() == [1]
    assert decide(np.array([[.2, .5, .3]]), .9).tolist() == [1]  # >2 classes: argmax


def test_calibration_keeps_the_ranking_and_records_the_threshold():
    """Labels drawn from sigmoid(s), logits 3 s: three times over-confident, T near 3."""
    rng = np.random.default_rng(0)
    s = rng.normal(0, 2, 400)
    labels = (rng.random(400) < 1 / (1 + np.exp(-s))).astype(int)
    logits = np.stack([np.zeros(400), 3 * s], axis=1)
    result = fit_calibration(logits, labels)
    assert 2.4 < result.temperature < 3.6 and not result.at_bound
    assert result.after["nll"] < result.before["nll"]
    assert result.after["ece"] < result.before["ece"]
    assert result.threshold is not None and 0 < result.threshold < 1
    assert result.threshold_balanced_accuracy >= result.argmax_balanced_accuracy
    assert result.reliability["before"] and result.reliability["after"]


def test_the_head_graph_applies_the_temperature():
    from lrmil.export.graphs import HeadGraph
    from lrmil.mil import GatedABMIL

    torch.manual_seed(0)
    mil = GatedABMIL(8, 3, hidden=8).eval()
    x = torch.randn(5, 8)
    with torch.no_grad():
        logits = mil(x, torch.tensor([0, 5])).logits[0]
        probs, _ = HeadGraph(mil, temperature=2.5)(x)
    torch.testing.assert_close(probs, torch.softmax(logits / 2.5, dim=-1))
