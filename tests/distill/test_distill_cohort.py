import shutil

import numpy as np
import pytest

from lrmil.data import read_features, write_features
from lrmil.distill import load_config, run
from lrmil.distill.cohort import load_cohort
from lrmil.errors import ConfigError, FileFormatError


@pytest.fixture
def features(toy_features, tmp_path):
    """A private copy of the toy cohort to break."""
    out = tmp_path / "features"
    shutil.copytree(toy_features, out)
    return out


def write_labels(path, rows):
    path.write_text("slide,label\n" + "".join(f"{s},{label}\n" for s, label in rows))
    return path


def test_loads_every_slide(toy_features):
    cohort = load_cohort(toy_features, toy_features / "labels.csv")
    assert len(cohort.slides) == 24 and cohort.class_names == ["class_0", "class_1"]
    assert cohort.r == 2 and cohort.lr_encoder == "lrmil-cnn"
    slide = cohort.slides["slide_001"]
    assert slide.label == 1 and slide.lr.shape == (10, 256) and slide.hr.shape[1] == 16
    assert int(slide.parent.max()) < 10 and int(slide.child.max()) < 4


def test_labels_with_unknown_slides(features, tmp_path):
    labels = write_labels(tmp_path / "l.csv", [("slide_000", "a"), ("slide_001", "b"),
                                               ("ghost", "a")])
    with pytest.raises(FileFormatError, match=r"1 slide\(s\) unknown .*: ghost"):
        load_cohort(features, labels)


def test_slides_without_features(features):
    (features / "hr" / "slide_003.h5").unlink()
    with pytest.raises(FileFormatError, match=r"no HR features in .*hr: slide_003"):
        load_cohort(features, features / "labels.csv")


def test_a_single_class(features, tmp_path):
    labels = write_labels(tmp_path / "l.csv", [("slide_000", "a"), ("slide_001", "a")])
    with pytest.raises(ConfigError, match="single class 'a'"):
        load_cohort(features, labels)


def test_nan_in_features_names_the_slide(features):
    path = features / "lr" / "slide_005.h5"
    feats = read_features(path)
    feats.features[3, 7] = np.nan
    write_features(path, feats)
    with pytest.raises(FileFormatError, match=r"LR features of slide 'slide_005' .*NaN.*row 3"):
        load_cohort(features, features / "labels.csv")


def test_a_fold_with_no_positives(features, tmp_path):
    rows = [(f"slide_{i:03d}", "pos" if i < 2 else "neg") for i in range(12)]
    labels = write_labels(tmp_path / "l.csv", rows)
    cfg = load_config(features=str(features), labels=str(labels), out=str(tmp_path / "run"))
    with pytest.raises(ConfigError, match=r"fold \d: the \w+ set .*no slide of class 'pos'"):
        run(cfg)
