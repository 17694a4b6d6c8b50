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


def test_final_model_trains_on_every_slide_with_the_folds_epochs(toy_run, toy_features):
    from lrmil.distill.cohort import load_cohort
    from lrmil.distill.final import median_epoch

    out, report = toy_run
    layout = RunLayout(out)
    training = json.loads(layout.final_training.read_text())
    cohort = load_cohort(toy_features, toy_features / "labels.csv")
    assert training["slides"] == len(cohort.names) == 24
    for model in ("teacher", "student"):
        best = {str(k): load_mil(layout.fold(k).model(model))[1]["best_epoch"] for k in (1, 2, 3)}
        assert training["fold_best_epochs"][model] == best
        assert training["epochs"][model] == median_epoch(list(best.values()))
        _, meta = load_mil(layout.final.model(model))
        assert meta["best_epoch"] == training["epochs"][model]  # exactly that many epochs
    assert median_epoch([3, 4]) == 4 and median_epoch([2, 5, 9]) == 5
    # On every slide: the final student standardises with the mean of all 24 slides' inputs.
    mil, _ = load_mil(layout.final.model("student"))
    store = FeatureStore()
    rows = np.concatenate([store.read(stage1_features(layout.final, n)) for n in cohort.names])
    np.testing.assert_allclose(mil.in_mean.numpy(), rows.mean(axis=0), atol=1e-4)
    # The default model of export and inference.
    _, default, _ = load_student(out)
    for key, value in mil.state_dict().items():
        torch.testing.assert_close(default.state_dict()[key], value)
    assert report["final"]["epochs"] == training["epochs"]
    assert "## Final model" in (out / "report.md").read_text()


def test_calibration_is_fitted_on_the_out_of_fold_predictions(toy_run):
    from lrmil.distill.calibration import fit_calibration, out_of_fold, read_calibration

    out, report = toy_run
    layout = RunLayout(out)
    saved = read_calibration(layout)
    logits, labels = out_of_fold(layout, [1, 2, 3])
    assert len(labels) == 24 and saved.slides == 24
    assert saved.temperature == pytest.approx(fit_calibration(logits, labels).temperature)
    assert saved.threshold is not None  # two classes
    assert layout.calibration_plot.stat().st_size > 0
    assert "## Calibration (deployed model)" in (out / "report.md").read_text()


def test_model_card_says_what_the_run_holds(toy_run):
    from lrmil import __version__
    from lrmil.distill.calibration import read_calibration

    out, _ = toy_run
    text = (out / "MODEL_CARD.md").read_text()
    temperature = read_calibration(RunLayout(out)).temperature
    for part in ("trained on all 24 labelled slides", "class_0: 12 slides / 12 patients",
                 "Classes: class_0, class_1", "LR encoder: lrmil-cnn", "95% CI",
                 f"T = {temperature:.3f}", "ECE (15 bins)", "Decision threshold",
                 "## Intended use", "## Known limits", f"lrmil {__version__}",
                 "None yet (`lrmil export RUN`)"):
        assert part in text, part


def test_export_and_engines_of_the_final_model_a_fold_and_the_ensemble(toy_run):
    """Each choice exports to its folder, records itself and the temperature, and every engine
    gives the same calibrated probabilities; the ensemble is the mean of the fold students."""
    from lrmil.distill.calibration import read_calibration
    from lrmil.export import export_run
    from lrmil.infer.engines import load_engine

    out, _ = toy_run
    temperature = read_calibration(RunLayout(out)).temperature
    probs = {}
    for name, options, folder in (("final", {}, "export"),
                                  ("fold 2", {"fold": 2}, "export_fold_2"),
                                  ("ensemble", {"ensemble": True}, "export_ensemble")):
        artifacts = export_run(out, **options)
        assert artifacts["mil"].parent == out / folder
        onnx = load_engine("onnx", out, **options)
        eager = load_engine("torch", out, device="cpu", **options)
        assert onnx.meta == eager.meta
        assert onnx.meta.temperature == pytest.approx(temperature)
        assert onnx.meta.threshold is not None
        side = onnx.meta.patch_size
        patches = torch.randint(0, 256, (6, side, side, 3),
                                generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
        p_onnx, a_onnx = onnx.aggregate(onnx.encode(patches))
        p_torch, a_torch = eager.aggregate(eager.encode(patches))
        torch.testing.assert_close(p_onnx, p_torch, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(a_onnx, a_torch, atol=1e-5, rtol=1e-4)
        probs[name] = p_torch
    assert load_engine("onnx", out).meta.model == "final"
    assert load_engine("onnx", out, ensemble=True).meta.folds == [1, 2, 3]
    members = []
    for k in (1, 2, 3):
        engine = load_engine("torch", out, fold=k, device="cpu")
        members.append(engine.aggregate(engine.encode(patches))[0])
    torch.testing.assert_close(probs["ensemble"], torch.stack(members).mean(0))
    card = (out / "MODEL_CARD.md").read_text()
    assert "export/mil.onnx: final model" in card and "export_ensemble/mil.onnx: ensemble" in card
