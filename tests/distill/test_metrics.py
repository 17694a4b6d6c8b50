import math

import numpy as np
import pytest

from lrmil.distill.metrics import classification_metrics, gap_recovered, mean_std


def test_binary_metrics():
    labels = np.array([0, 0, 1, 1])
    probs = np.array([[0.9, 0.1], [0.4, 0.6], [0.35, 0.65], [0.2, 0.8]])
    m = classification_metrics(labels, probs)
    assert m["auc"] == pytest.approx(1.0)  # every positive scores above every negative
    assert m["accuracy"] == pytest.approx(0.75)
    assert m["balanced_accuracy"] == pytest.approx(0.75)
    # class 0: P=1, R=.5, F1=2/3; class 1: P=2/3, R=1, F1=.8; weighted by support 2/2
    assert m["f1_weighted"] == pytest.approx((2 / 3 + 0.8) / 2)


def test_multiclass_auc_is_one_vs_rest_macro():
    labels = np.array([0, 1, 2, 2])
    probs = np.array([[0.8, 0.1, 0.1], [0.1, 0.8, 0.1], [0.1, 0.2, 0.7], [0.5, 0.1, 0.4]])
    m = classification_metrics(labels, probs)
    # class 0 vs rest: scores .8 | .1 .1 .5 -> 1; class 1: .8 | .1 .2 .1 -> 1;
    # class 2: .7 .4 | .1 .1 -> 1
    assert m["auc"] == pytest.approx(1.0)
    assert m["accuracy"] == pytest.approx(0.75)


def test_auc_undefined_with_one_class():
    assert math.isnan(classification_metrics(np.array([1, 1]), np.array([[.2, .8], [.3, .7]]))
                      ["auc"])


def test_gap_recovered_and_mean_std():
    assert gap_recovered(0.9, 0.7, 0.85) == pytest.approx(0.75)
    assert math.isnan(gap_recovered(0.7, 0.7, 0.8))
    mean, std = mean_std([1.0, 2.0, 3.0, math.nan])
    assert mean == pytest.approx(2.0) and std == pytest.approx(1.0)
