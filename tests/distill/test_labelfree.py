"""Unlabelled slides (empty label) in stage 1 only: never in a fold's test set nor MIL."""

import contextlib
import csv
import importlib

import h5py
import numpy as np
import pytest

from lrmil.distill import load_config, run
from lrmil.distill.checkpoint import load_meta
from lrmil.distill.cohort import UNLABELLED, load_cohort
from lrmil.distill.predictions import read_predictions
from lrmil.distill.report import stage1_markdown
from lrmil.distill.splits import read_splits
from lrmil.distill.stage1 import _load_groups, _plan, stage1_slides
from lrmil.distill.toy import TINY_OVERRIDES

UNLABELLED_SLIDES = [f"slide_{i:03d}" for i in range(18, 24)]
MODELS = ["teacher", "baseline", "student"]
run_module = importlib.import_module("lrmil.distill.run")  # `lrmil.distill.run` is the function


def write_labels(path, toy_features, unlabelled=True):
    """The toy cohort's labels with slides 18-23 unlabelled (or left out); slide_023 belongs
    to slide_000's patient."""
    with (toy_features / "labels.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["slide", "patient", "label"])
        writer.writeheader()
        for row in rows:
            if row["slide"] in UNLABELLED_SLIDES:
                if not unlabelled:
                    continue
                row["label"] = ""
            if row["slide"] == "slide_023":
                row["patient"] = "patient_000"
            writer.writerow(row)
    return path


def config(toy_features, labels, out, *extra):
    return load_config(overrides=[*TINY_OVERRIDES, "stage1.slides=all", *extra],
                       features=str(toy_features), labels=str(labels), out=str(out))


@pytest.fixture(scope="module")
def labelfree_run(toy_features, tmp_path_factory):
    """A run with 6 unlabelled slides in stage 1 (VICReg), and the slides stage 1 saw."""
    tmp = tmp_path_factory.mktemp("labelfree")
    labels = write_labels(tmp / "labels.csv", toy_features)
    seen = {}
    original = run_module.run_stage1

    def record(cohort, names, cfg, out, *args):
        seen[out.index] = list(names)
        return original(cohort, names, cfg, out, *args)

    run_module.run_stage1 = record
    try:
        cfg = config(toy_features, labels, tmp / "run", "stage1.objective=vicreg",
                     "stage1.vicreg_projector=[32,16]")
        report = run(cfg)
    finally:
        run_module.run_stage1 = original
    return tmp, labels, cfg, report, seen


def test_the_cohort_keeps_unlabelled_slides_apart(toy_features, tmp_path):
    cohort = load_cohort(toy_features, write_labels(tmp_path / "l.csv", toy_features))
    assert sorted(cohort.slides) == [f"slide_{i:03d}" for i in range(18)]
    assert cohort.unlabelled_names == UNLABELLED_SLIDES and cohort.unlisted == []
    assert cohort.slide("slide_020").label == UNLABELLED
    assert cohort.class_names == ["class_0", "class_1"]


def test_stage1_never_sees_a_test_slide_nor_a_test_patient(labelfree_run):
    tmp, _, _, report, seen = labelfree_run
    folds = read_splits(tmp / "run" / "splits.csv")
    assert sorted(seen) == [f.index for f in folds]
    for fold in folds:
        names = set(seen[fold.index])
        assert not names & set(fold.test)
        assert set(fold.train) | set(fold.val) <= names  # all = every slide outside the test
        expected = set(UNLABELLED_SLIDES) - ({"slide_023"} if "slide_000" in fold.test else set())
        assert names & set(UNLABELLED_SLIDES) == expected
        teacher = load_meta(tmp / "run" / f"fold_{fold.index}" / "teacher.safetensors")
        assert report["stage1"]["per_fold"][str(fold.index)] == {
            "labelled": len(fold.train) + len(fold.val), "unlabelled": len(expected),
            "teacher_val_auc": teacher["val_auc"]}
    assert any("slide_000" in fold.test for fold in folds)
    text = (tmp / "run" / "report.md").read_text()
    assert "## Stage 1" in text and "Objective vicreg, children weighted by the teacher" in text
    per_fold = report["stage1"]["per_fold"]["1"]
    assert (f"| 1 | {per_fold['labelled']} | {per_fold['unlabelled']} | "
            f"{per_fold['teacher_val_auc']:.3f} |") in text
    assert "6 unlabelled slide(s) (empty label; stage 1 only" in text


def test_unlabelled_slides_are_absent_from_mil_training_and_metrics(labelfree_run,
                                                                   toy_features):
    """The teacher and the baseline are the same models as in a run without the unlabelled
    rows (same splits, same training slides): only the student's stage 1 differs."""
    tmp, _, _, report, _ = labelfree_run
    labels = write_labels(tmp / "without.csv", toy_features, unlabelled=False)
    without = run(config(toy_features, labels, tmp / "without", "stage1.objective=vicreg",
                         "stage1.vicreg_projector=[32,16]", "stage1.slides=train"))
    assert (tmp / "run" / "splits.csv").read_text() == (tmp / "without" / "splits.csv").read_text()
    for k in report["folds"]:
        for model in MODELS:
            slides, _, probs = read_predictions(tmp / "run" / f"fold_{k}" / f"pred_{model}.csv")
            assert not set(slides) & set(UNLABELLED_SLIDES)
            if model != "student":
                _, _, other = read_predictions(tmp / "without" / f"fold_{k}" / f"pred_{model}.csv")
                np.testing.assert_array_equal(probs, other)
        assert report["per_fold"][str(k)]["teacher"] == without["per_fold"][str(k)]["teacher"]
        # the teacher's attention on unlabelled slides is written for stage 1's weights
        with h5py.File(tmp / "run" / f"fold_{k}" / "teacher_outputs.h5") as fh:
            assert set(UNLABELLED_SLIDES) <= set(fh)
        with h5py.File(tmp / "run" / f"fold_{k}" / "stage1_features.h5") as fh:
            assert not set(UNLABELLED_SLIDES) & set(fh)  # the student never reads them


def test_a_resumed_run_with_unlabelled_slides_equals_an_uninterrupted_one(labelfree_run,
                                                                          toy_features):
    tmp, labels, cfg, _, _ = labelfree_run

    class Stop(Exception):
        pass

    def stop_at_fold_2_student(description):
        if description == "fold 2: student":
            raise Stop
        return contextlib.nullcontext()

    resumed = config(toy_features, labels, tmp / "resumed", "stage1.objective=vicreg",
                     "stage1.vicreg_projector=[32,16]")
    with pytest.raises(Stop):
        run(resumed, on_step=stop_at_fold_2_student)
    assert (tmp / "resumed" / "fold_2" / "stage1_features.h5").exists()
    assert not (tmp / "resumed" / "fold_2" / "student.safetensors").exists()
    run(resumed)
    for k in (1, 2, 3):
        for model in MODELS:
            a = read_predictions(tmp / "run" / f"fold_{k}" / f"pred_{model}.csv")
            b = read_predictions(tmp / "resumed" / f"fold_{k}" / f"pred_{model}.csv")
            assert a[0] == b[0]
            np.testing.assert_array_equal(a[2], b[2])
    assert (tmp / "run" / "report.md").read_text() == (tmp / "resumed" / "report.md").read_text()


def test_uniform_weights_average_the_valid_children(toy_features, tmp_path):
    cohort = load_cohort(toy_features, write_labels(tmp_path / "l.csv", toy_features))
    cfg = load_config(overrides=["stage1.weights=uniform", "stage1.epochs=1"]).stage1
    names = ["slide_001", "slide_020"]  # a labelled and an unlabelled slide
    group = next(_load_groups(cohort, _plan(cohort, names, [], cfg, 0), None, [], with_lr=True))
    batch = group.batch(np.arange(len(group)))
    counts = batch.valid.sum(1, keepdim=True).float()
    np.testing.assert_allclose(batch.weight.numpy(),
                               (batch.valid.float() / counts).numpy(), rtol=1e-6)
    assert cohort.store.reads > 0


def test_train_is_the_folds_labelled_training_slides(toy_features, tmp_path):
    from lrmil.distill.splits import Fold

    cohort = load_cohort(toy_features, write_labels(tmp_path / "l.csv", toy_features))
    fold = Fold(1, ["slide_002", "slide_001"], ["slide_003"], ["slide_000"])
    assert stage1_slides(cohort, fold, "train") == ["slide_001", "slide_002"]
    every = stage1_slides(cohort, fold, "all")
    assert "slide_000" not in every and "slide_023" not in every  # a test patient's slide
    assert "slide_003" in every and "slide_022" in every and "slide_017" in every


def test_the_stage1_table_gives_the_teacher_validation_auc_when_its_attention_weights():
    folds = {"1": {"labelled": 3, "unlabelled": 2}}
    uniform = stage1_markdown({"objective": "mse", "weights": "uniform", "slides": "all",
                               "per_fold": folds})
    assert uniform[-2:] == ["|---|---|---|", "| 1 | 3 | 2 |"]
    assert not any("misleads" in line for line in uniform)
    folds = {"1": {**folds["1"], "teacher_val_auc": 0.70833}}
    teacher = stage1_markdown({"objective": "mse", "weights": "teacher", "slides": "all",
                               "per_fold": folds})
    assert teacher[4:7] == ["| fold | labelled slides | unlabelled slides | teacher validation "
                            "AUC |", "|---|---|---|---|", "| 1 | 3 | 2 | 0.708 |"]
    assert "stage1.weights=uniform" in teacher[-1]  # the remedy, on slides it never saw
    train = stage1_markdown({"objective": "mse", "weights": "teacher", "slides": "train",
                             "per_fold": folds})
    assert train[-1] == "| 1 | 3 | 2 | 0.708 |"
