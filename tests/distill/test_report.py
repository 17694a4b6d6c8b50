"""The report from hand-written fold predictions: counts, multi-class AUCs, intervals, ROC."""

import json

import numpy as np
import pytest

from lrmil.distill.layout import RunLayout
from lrmil.distill.metrics import bootstrap_ci, per_class_auc
from lrmil.distill.predictions import write_predictions
from lrmil.distill.report import build_report, markdown, summary_header, write_report

CLASSES = ["a", "b", "c"]
# Fold 1: perfect on a/b, c's second slide ranked below an "a" slide for class c.
FOLD_1 = ([0, 1, 2, 2], [[.8, .1, .1], [.1, .8, .1], [.1, .2, .7], [.5, .1, .4]])
FOLD_2 = ([0, 1, 2, 0], [[.6, .3, .1], [.2, .7, .1], [.2, .1, .7], [.3, .2, .5]])


def write_run(root, models=("teacher", "baseline", "student")):
    layout = RunLayout(root)
    for k, (labels, probs) in enumerate((FOLD_1, FOLD_2), start=1):
        layout.fold(k).dir.mkdir(parents=True)
        for model in models:
            write_predictions(layout.fold(k).predictions(model),
                              [f"s{k}_{i}" for i in range(4)], labels, np.log(probs), CLASSES)
    return list(models)


def test_per_class_auc_by_hand():
    labels, probs = np.array(FOLD_1[0]), np.array(FOLD_1[1])
    # class 2 vs rest: positives .7 .4, negatives .1 .1 -> 1; change the last row to beat it
    probs = probs.copy()
    probs[0, 2] = 0.5  # a negative at .5: pairs (.7 > .5, .7 > .1, .4 < .5, .4 > .1) -> 3/4
    assert per_class_auc(labels, probs) == pytest.approx([1.0, 1.0, 0.75])


def test_bootstrap_interval_is_seeded_and_holds_the_value():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, 60)
    score = np.clip(labels * 0.3 + rng.random(60) * 0.7, 0, 1)
    probs = np.stack([1 - score, score], axis=1)
    a = bootstrap_ci(labels, probs, resamples=500, seed=3)
    b = bootstrap_ci(labels, probs, resamples=500, seed=3)
    assert a == b
    for metric in ("auc", "accuracy", "balanced_accuracy"):
        assert a[metric]["low"] <= a[metric]["value"] <= a[metric]["high"]
        assert a[metric]["high"] - a[metric]["low"] > 0.02  # 60 slides: not a point
    perfect = bootstrap_ci(np.array([0, 0, 1, 1]), np.array([[.9, .1], [.8, .2], [.3, .7],
                                                             [.1, .9]]), resamples=200)
    assert perfect["auc"] == {"value": 1.0, "low": 1.0, "high": 1.0}


def test_report_counts_and_multiclass_auc_names(tmp_path):
    models = write_run(tmp_path)
    counts = {"1": {"train": {"a": {"slides": 5, "patients": 4}, "b": {"slides": 3, "patients": 3},
                              "c": {"slides": 2, "patients": 2}},
                    "test": {"a": {"slides": 1, "patients": 1}, "b": {"slides": 1, "patients": 1},
                             "c": {"slides": 2, "patients": 1}}}}
    report = build_report(tmp_path, [1, 2], models, CLASSES, {"fold_counts": counts})
    pooled = report["pooled"]["student"]
    labels = np.array(FOLD_1[0] + FOLD_2[0])
    probs = np.array(FOLD_1[1] + FOLD_2[1])
    assert pooled["slides"] == 8
    assert pooled["auc_per_class"] == pytest.approx(per_class_auc(labels, probs))
    assert pooled["auc"]["value"] == pytest.approx(np.mean(pooled["auc_per_class"]))
    assert report["per_fold"]["1"]["student"]["auc_per_class"] == pytest.approx(
        per_class_auc(np.array(FOLD_1[0]), np.array(FOLD_1[1])))
    assert summary_header(report)[1] == "macro AUC"
    text = markdown(report)
    assert "| model | macro AUC | accuracy" in text and "| model | AUC |" not in text
    assert "| model | a | b | c | macro AUC |" in text
    assert "| 1 | train | 5 / 4 | 3 / 3 | 2 / 2 |" in text
    assert "| 1 | test | 1 / 1 | 1 / 1 | 2 / 1 |" in text
    assert "2000 bootstrap resamples" in text


def test_write_report_two_classes_says_auc(tmp_path):
    layout = RunLayout(tmp_path)
    layout.fold(1).dir.mkdir()
    models = ["teacher", "baseline", "student"]
    for model in models:
        write_predictions(layout.fold(1).predictions(model), ["x", "y", "z"], [0, 1, 1],
                          np.log([[.7, .3], [.4, .6], [.8, .2]]), ["neg", "pos"])
    report = build_report(tmp_path, [1], models, ["neg", "pos"])
    text = write_report(tmp_path, report)
    assert summary_header(report)[1] == "AUC" and "macro" not in text
    assert report["pooled"]["student"]["auc"]["value"] == pytest.approx(0.5)
    assert json.loads(layout.metrics.read_text())["pooled"]["student"]["slides"] == 3
    assert layout.roc.stat().st_size > 0


def test_roc_legend_matches_the_pooled_macro_auc(tmp_path, monkeypatch):
    """The legend's macro figure is the area of the drawn macro-average curve, and equals the
    pooled macro AUC of the report."""
    import matplotlib.axes

    models = write_run(tmp_path)
    report = build_report(tmp_path, [1, 2], models, CLASSES)
    labels = []
    original = matplotlib.axes.Axes.plot

    def spy(self, *args, **kwargs):
        if "label" in kwargs:
            labels.append(kwargs["label"])
        return original(self, *args, **kwargs)

    monkeypatch.setattr(matplotlib.axes.Axes, "plot", spy)
    write_report(tmp_path, report)
    macro = f"{report['pooled']['student']['auc']['value']:.3f}"
    assert f"macro average (macro AUC {macro})" in labels
    per_class = [f"{a:.3f}" for a in report["pooled"]["student"]["auc_per_class"]]
    assert [f"{c} vs rest (AUC {a})" for c, a in zip(CLASSES, per_class, strict=True)] == labels[:3]
