import pytest

from lrmil.distill.splits import check_splits, make_splits, read_splits, write_splits
from lrmil.errors import ConfigError, FileFormatError


def cohort(n_patients=20, slides_per_patient=2):
    slides, labels, patients = [], [], []
    for p in range(n_patients):
        for s in range(slides_per_patient):
            slides.append(f"p{p}_s{s}")
            labels.append(int(p % 4 == 0))  # 25% positive patients
            patients.append(f"p{p}")
    return slides, labels, patients


def test_patient_level_stratified_and_every_slide_tested_once():
    slides, labels, patients = cohort()
    folds = make_splits(slides, labels, patients, folds=5, seed=3)
    label_of = dict(zip(slides, labels, strict=True))
    patient_of = dict(zip(slides, patients, strict=True))
    tested = [s for f in folds for s in f.test]
    assert sorted(tested) == sorted(slides)
    for fold in folds:
        parts = [set(fold.train), set(fold.val), set(fold.test)]
        assert set().union(*parts) == set(slides)
        assert sum(map(len, parts)) == len(slides)
        patient_sets = [{patient_of[s] for s in p} for p in parts]
        assert not (patient_sets[0] & patient_sets[1] or patient_sets[0] & patient_sets[2]
                    or patient_sets[1] & patient_sets[2])
        # 5 positive patients over 5 folds: one in every test set
        assert sum(label_of[s] for s in fold.test) == 2
    check_splits(folds, label_of, ["neg", "pos"])


def test_reproducible_from_the_seed():
    slides, labels, patients = cohort()
    assert make_splits(slides, labels, patients, 5, seed=1) == make_splits(
        slides, labels, patients, 5, seed=1)
    assert make_splits(slides, labels, patients, 5, seed=1) != make_splits(
        slides, labels, patients, 5, seed=2)


def test_csv_round_trip(tmp_path):
    slides, labels, patients = cohort(10, 1)
    folds = make_splits(slides, labels, patients, 3, seed=0)
    write_splits(folds, tmp_path / "splits.csv")
    assert read_splits(tmp_path / "splits.csv", set(slides)) == folds
    header = (tmp_path / "splits.csv").read_text().splitlines()[0]
    assert header == "slide,fold_1,fold_2,fold_3"


def test_a_fold_with_no_positives_is_refused():
    slides, labels, patients = cohort(8, 1)  # 2 positive patients, 5 folds
    folds = make_splits(slides, labels, patients, 5, seed=0)
    with pytest.raises(ConfigError, match=r"fold \d: the (test|val|train) set .* class 'pos'"):
        check_splits(folds, dict(zip(slides, labels, strict=True)), ["neg", "pos"])


def test_bad_splits_csv(tmp_path):
    path = tmp_path / "s.csv"
    path.write_text("slide,fold_1,fold_2\na,train,test\nb,test,holdout\n")
    with pytest.raises(FileFormatError, match="line 3: fold_2 is 'holdout'"):
        read_splits(path)
    path.write_text("slide,fold_1,fold_2\nzzz,train,test\n")
    with pytest.raises(FileFormatError, match="unknown slide 'zzz'"):
        read_splits(path, {"a"})
