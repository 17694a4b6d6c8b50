import json
import shutil

import h5py
import numpy as np
import pytest

from lrmil.data import read_features, write_features
from lrmil.distill import load_config, run
from lrmil.distill.cohort import load_cohort
from lrmil.distill.toy import TINY_OVERRIDES
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


def test_knows_every_slide_without_reading_its_features(toy_features):
    cohort = load_cohort(toy_features, toy_features / "labels.csv")
    assert len(cohort.slides) == 24 and cohort.class_names == ["class_0", "class_1"]
    assert cohort.r == 2 and cohort.lr_encoder == "lrmil-cnn"
    assert (cohort.lr_dim, cohort.hr_dim) == (256, 16)
    slide = cohort.slides["slide_001"]
    assert slide.label == 1 and slide.n_lr == 10 and slide.hr_itemsize == 4
    hr = read_features(toy_features / "hr" / "slide_001.h5")
    assert slide.n_hr == len(hr) and cohort.unlisted == [] and cohort.unlabelled == {}
    # Only the small index arrays were read (parent, child: 2 per slide), no features.
    assert cohort.store.reads == 2 * 24
    np.testing.assert_array_equal(cohort.store.read(cohort.hr("slide_001")), hr.features)
    assert cohort.counts() == {"class_0": {"slides": 12, "patients": 12},
                               "class_1": {"slides": 12, "patients": 12}}


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


def test_nan_in_features_names_the_file_and_row(features, tmp_path):
    path = features / "lr" / "slide_005.h5"
    feats = read_features(path)
    feats.features[3, 7] = np.nan
    write_features(path, feats)
    cfg = load_config(overrides=TINY_OVERRIDES, features=str(features),
                      labels=str(features / "labels.csv"), out=str(tmp_path / "run"))
    with pytest.raises(FileFormatError,
                       match=r"lr/slide_005.h5: 'features' .*NaN.* first at row 3"):
        run(cfg)


def _rewrite(path, **attrs_or_features):
    feats = read_features(path)
    if "features" in attrs_or_features:
        feats.features = attrs_or_features.pop("features")
    feats.attrs.update(attrs_or_features)
    write_features(path, feats)


def test_a_slide_of_another_dimension_is_named_before_any_fold(features, tmp_path):
    path = features / "hr" / "slide_007.h5"
    _rewrite(path, features=np.zeros((len(read_features(path)), 24), np.float32))
    cfg = load_config(overrides=TINY_OVERRIDES, features=str(features),
                      labels=str(features / "labels.csv"), out=str(tmp_path / "run"))
    with pytest.raises(FileFormatError, match=r"HR features in .* mix embedding sizes: 16 in 23 "
                                              r"slide\(s\), 24 in 1 slide\(s\): slide_007$"):
        run(cfg)
    assert not (tmp_path / "run").exists()  # nothing written, no fold folder


def test_features_of_other_weights_under_the_same_name_are_refused(features):
    for name in ("slide_002", "slide_011"):
        _rewrite(features / "lr" / f"{name}.h5", encoder_digest="0badc0de")
    for name in sorted(p.stem for p in (features / "lr").glob("*.h5")):
        if name not in ("slide_002", "slide_011"):
            _rewrite(features / "lr" / f"{name}.h5", encoder_digest="5eed0001")
    with pytest.raises(FileFormatError, match=r"lr mixes encoders: lrmil-cnn \(weights digest "
                                              r"5eed0001\) in 22 .*0badc0de\) in 2 slide\(s\): "
                                              r"slide_002, slide_011"):
        load_cohort(features, features / "labels.csv")


def test_unlisted_slides_are_named_and_counts_reported(features, tmp_path):
    rows = [(f"slide_{i:03d}", f"class_{i % 2}") for i in range(21)]
    labels = write_labels(tmp_path / "l.csv", rows)
    cohort = load_cohort(features, labels)
    assert cohort.unlisted == ["slide_021", "slide_022", "slide_023"]
    notes = []
    cfg = load_config(overrides=[*TINY_OVERRIDES, "stage1.enabled=false"],
                      features=str(features), labels=str(labels), out=str(tmp_path / "run"))
    report = run(cfg, on_note=notes.append)
    assert notes[0] == ("cohort: 21 labelled slides (class_0: 11 slides / 11 patients, "
                        "class_1: 10 slides / 10 patients)")
    assert notes[1].startswith("3 slide(s) have features but are not in the labels CSV") and \
        notes[1].endswith("slide_021, slide_022, slide_023")
    text = (tmp_path / "run" / "report.md").read_text()
    assert "| class_0 | 11 | 11 |" in text and "| all | 21 | 21 |" in text
    assert ("3 slide(s) with features but not in the labels CSV, not used: slide_021, "
            "slide_022, slide_023") in text
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert saved["cohort"] == report["cohort"] and saved["cohort"]["patients"] == 21


def test_a_features_file_rewritten_during_a_run_is_refused(features, tmp_path):
    cfg = load_config(overrides=[*TINY_OVERRIDES, "data.cache_gb=0"], features=str(features),
                      labels=str(features / "labels.csv"), out=str(tmp_path / "run"))

    def rewrite_on_student(description):
        import contextlib

        if description == "fold 1: student":
            with h5py.File(features / "lr" / "slide_004.h5", "a") as fh:
                fh.attrs["touched"] = 1
        return contextlib.nullcontext()

    with pytest.raises(FileFormatError, match=r"slide_004.h5 changed while this run was using"):
        run(cfg, on_step=rewrite_on_student)


def test_a_fold_with_no_positives(features, tmp_path):
    rows = [(f"slide_{i:03d}", "pos" if i < 3 else "neg") for i in range(12)]  # 3 < 5 folds
    labels = write_labels(tmp_path / "l.csv", rows)
    cfg = load_config(overrides=["stage1.mode=adapter"], features=str(features),
                      labels=str(labels), out=str(tmp_path / "run"))
    with pytest.raises(ConfigError, match=r"fold \d: the \w+ set .*no slide of class 'pos'"):
        run(cfg)
    assert not (tmp_path / "run").exists()


def test_a_class_of_too_few_slides_is_called_a_typo(features, tmp_path):
    rows = [(f"slide_{i:03d}", "negatve" if i == 0 else ("pos", "neg")[i % 2]) for i in range(12)]
    labels = write_labels(tmp_path / "l.csv", rows)
    cfg = load_config(features=str(features), labels=str(labels), out=str(tmp_path / "run"))
    with pytest.raises(ConfigError, match=r"class 'negatve' has 1 slide\(s\), fewer than the 3 .* "
                                          r"a typo in the label\? \(other classes: 'neg': 6, "
                                          r"'pos': 5\)"):
        run(cfg)
    assert not (tmp_path / "run").exists()
