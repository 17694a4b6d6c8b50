import json

import numpy as np
import pytest
import torch

from lrmil.data.store import FeatureStore
from lrmil.distill import load_config, load_student, run
from lrmil.distill.checkpoint import load_mil
from lrmil.distill.layout import RunLayout
from lrmil.distill.predictions import read_predictions
from lrmil.distill.stage1 import stage1_features
from lrmil.distill.teacher import teacher_attn_logits, teacher_logits
from lrmil.distill.toy import TINY_OVERRIDES

MODELS = ["teacher", "baseline", "student", "student_no_stage1", "student_no_attn_kd",
          "student_no_logit_kd"]


def config(toy_features, out, *extra):
    overrides = [*TINY_OVERRIDES, "ablations=no_stage1,no_attn_kd,no_logit_kd", *extra]
    return load_config(overrides=overrides, features=str(toy_features),
                       labels=str(toy_features / "labels.csv"), out=str(out))


@pytest.fixture(scope="module")
def toy_run(toy_features, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    report = run(config(toy_features, out))
    return out, report


def test_run_writes_every_output(toy_run):
    out, report = toy_run
    for name in ("config.json", "splits.csv", "metrics.json", "report.md", "roc.png"):
        assert (out / name).is_file(), name
    for k in (1, 2, 3):
        for model in MODELS:
            assert (out / f"fold_{k}" / f"{model}.safetensors").is_file()
            assert (out / f"fold_{k}" / f"pred_{model}.csv").is_file()
        assert (out / f"fold_{k}" / "stage1_adapter.safetensors").is_file()
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["models"] == MODELS
    summary = saved["summary"]
    assert set(summary["student"]) >= {"auc", "accuracy", "balanced_accuracy", "f1_weighted",
                                       "gap_recovered", "gap_recovered_of_means"}
    # The HR signal is clear: the teacher is (near) perfect.
    assert summary["teacher"]["auc"]["mean"] >= 0.9
    text = (out / "report.md").read_text()
    assert "HR teacher" in text and "LR baseline" in text and "gap recovered" in text
    config_json = json.loads((out / "config.json").read_text())
    assert config_json["class_names"] == ["class_0", "class_1"]
    assert config_json["encoder"]["lr"] == "lrmil-cnn" and "versions" in config_json


def test_teacher_saves_logits_and_attention_logits(toy_run, toy_features):
    out, _ = toy_run
    from lrmil.distill.cohort import load_cohort

    cohort = load_cohort(toy_features, toy_features / "labels.csv")
    fold = RunLayout(out).fold(1)
    import h5py

    with h5py.File(fold.teacher_outputs) as fh:
        assert sorted(fh) == cohort.names
    model, _ = load_mil(fold.model("teacher"))
    read = cohort.store.read
    for name in cohort.names:
        logits = torch.from_numpy(read(teacher_logits(fold.teacher_outputs, name)))
        attn_logits = torch.from_numpy(read(teacher_attn_logits(fold.teacher_outputs, name)))
        hr = torch.from_numpy(read(cohort.hr(name)))
        assert logits.shape == (2,) and attn_logits.shape == (hr.shape[0],)
        # Pre-softmax logits (not weights, not the bag vector): softmax over the bag gives
        # the weights of the pooling that produced the saved slide logits.
        assert not torch.isclose(attn_logits.sum(), torch.tensor(1.0))
        with torch.no_grad():
            # The teacher standardises (and projects) its inputs before pooling.
            h = model.project((hr - model.in_mean) / model.in_std)
            z = torch.softmax(attn_logits, 0) @ h
            assert torch.allclose(model.classifier(z), logits, atol=1e-4)
            direct = model(hr, torch.tensor([0, hr.shape[0]]))
        assert torch.allclose(direct.attn_logits, attn_logits, atol=1e-5)


def test_a_resumed_run_equals_an_uninterrupted_one(toy_run, toy_features, tmp_path):
    reference, _ = toy_run

    class Stop(Exception):
        pass

    def stop_at_fold_2_student(description):
        if description == "fold 2: student":
            raise Stop
        import contextlib

        return contextlib.nullcontext()

    cfg = config(toy_features, tmp_path)
    with pytest.raises(Stop):
        run(cfg, on_step=stop_at_fold_2_student)
    assert not (tmp_path / "fold_2" / "student.safetensors").exists()
    assert (tmp_path / "fold_2" / "teacher.safetensors").exists()
    run(cfg)
    for k in (1, 2, 3):
        for model in MODELS:
            a = read_predictions(reference / f"fold_{k}" / f"pred_{model}.csv")
            b = read_predictions(tmp_path / f"fold_{k}" / f"pred_{model}.csv")
            assert a[0] == b[0]
            np.testing.assert_array_equal(a[2], b[2])
    assert (reference / "report.md").read_text() == (tmp_path / "report.md").read_text()


def test_the_data_settings_change_no_result(toy_run, toy_features, tmp_path):
    """No cache and 2 reading processes, or everything cached read in-process: the same
    predictions (nothing depends on how features are read)."""
    reference, _ = toy_run
    run(config(toy_features, tmp_path, "data.cache_gb=0", "data.workers=2"))
    for model in MODELS:
        a = read_predictions(reference / "fold_3" / f"pred_{model}.csv")
        b = read_predictions(tmp_path / "fold_3" / f"pred_{model}.csv")
        np.testing.assert_array_equal(a[2], b[2])
    # and a run is resumed whatever they are
    run(config(toy_features, tmp_path, "data.cache_gb=1", "data.workers=0"))


def test_other_settings_in_an_existing_run_are_refused(toy_run, toy_features):
    out, _ = toy_run
    from lrmil.errors import ConfigError

    with pytest.raises(ConfigError, match="other settings .*kd.lambda_bag"):
        run(config(toy_features, out, "kd.lambda_bag=0.3"))


def test_student_checkpoint_loads_and_predicts_the_same(toy_run):
    out, _ = toy_run
    encoder, mil, config_json = load_student(out, fold=2)
    names, _, probs = read_predictions(out / "fold_2" / "pred_student.csv")
    store = FeatureStore()
    with torch.no_grad():
        for name, expected in zip(names, probs, strict=True):
            x = torch.from_numpy(store.read(stage1_features(RunLayout(out).fold(2), name)))
            got = torch.softmax(mil(x, torch.tensor([0, len(x)])).logits, 1)[0]
            np.testing.assert_allclose(got.numpy(), expected, atol=1e-5)
        # adapter mode: the encoder includes the adapter and gives the student's input size
        patches = torch.zeros(1, 64, 64, 3, dtype=torch.uint8)
        assert encoder.model(encoder.preprocess(patches)).shape == (1, mil.in_dim)
    assert config_json["stage1"]["mode"] == "adapter"
    best, _, _ = load_student(out)
    assert best.dim == encoder.dim
