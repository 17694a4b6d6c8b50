"""`lrmil infer --labels`: held-out predictions scored against their labels."""

import json

import pytest

from lrmil.errors import ConfigError
from lrmil.infer.evaluate import evaluate, read_held_out_labels, summary_line


def test_evaluation_of_a_predictions_table(tmp_path):
    (tmp_path / "predictions.csv").write_text(
        "slide,predicted,prob_neg,prob_pos,threshold,n_patches,seconds\n"
        "a,neg,0.900000,0.100000,0.300000,10,0.1\n"
        "b,pos,0.600000,0.400000,0.300000,10,0.1\n"  # called pos by the threshold: wrong
        "c,pos,0.200000,0.800000,0.300000,10,0.1\n"
        "d,neg,0.800000,0.200000,0.300000,10,0.1\n"  # a positive missed
        "e,neg,0.700000,0.300000,0.300000,10,0.1\n")  # no label: left out
    labels_csv = tmp_path / "labels.csv"
    labels_csv.write_text("slide,label\na,neg\nb,neg\nc,pos\nd,pos\n")
    labels = read_held_out_labels(labels_csv, ["neg", "pos"])
    result = evaluate(tmp_path, labels, ["neg", "pos"])
    assert result["slides"] == 4 and result["unlabelled"] == ["e"]
    assert result["accuracy"] == pytest.approx(0.5)  # the calls, not the argmax (0.75)
    assert result["balanced_accuracy"] == pytest.approx(0.5)
    assert result["auc"] == pytest.approx(0.75)  # pos .8 .2 vs neg .1 .4: 3 of 4 pairs
    # ECE over the top-label confidences .9 (right) .6 (right: argmax neg) .8 (right) .8 (wrong)
    assert result["ece"] == pytest.approx((abs(1 - .9) + abs(1 - .6) + 2 * abs(.5 - .8)) / 4)
    assert result["threshold"] == "0.300000"
    assert json.loads((tmp_path / "evaluation.json").read_text()) == result
    assert summary_line(result).startswith("4 labelled slides: AUC 0.750, accuracy 0.500")


def test_a_label_the_model_does_not_know_is_refused(tmp_path):
    labels_csv = tmp_path / "labels.csv"
    labels_csv.write_text("slide,label\na,tumor\n")
    with pytest.raises(ConfigError, match="'tumor'.* not classes of the model"):
        read_held_out_labels(labels_csv, ["neg", "pos"])
