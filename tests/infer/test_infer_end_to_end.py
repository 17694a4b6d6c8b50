"""synth -> tile -> embed -> distill -> `lrmil export` -> `lrmil infer`: the predictions of
inference from the slide files equal those of the distill run's own evaluation, calibrated by
the run's temperature (the exported graph applies it)."""

import csv

import numpy as np
import pytest
from lrmil.cli.main import app
from typer.testing import CliRunner


def _probs(path, key="slide"):
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    columns = [c for c in rows[0] if c.startswith("prob_")]
    return {r[key]: np.array([float(r[c]) for c in columns]) for r in rows}, columns


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from lrmil.distill import load_config, run
    from lrmil.embed import embed_slides
    from lrmil.synth import make_cohort
    from lrmil.tiling import TilingConfig, tile_slides

    out = tmp_path_factory.mktemp("e2e")
    make_cohort(out / "cohort", n_slides=12, seed=0, width=1024, height=1024)
    tile_slides([out / "cohort" / "slides"], out / "tiled", TilingConfig(patch_size=64))
    embed_slides(out / "tiled", "lrmil-cnn", out / "feat", mag="both")
    short = [f"{m}.{k}={v}" for m in ("teacher", "student", "baseline")
             for k, v in (("epochs", 2), ("min_epochs", 1))]
    cfg = load_config(None, ["stage1.mode=adapter", "stage1.epochs=1", *short],
                      features=str(out / "feat"), labels=str(out / "cohort" / "labels.csv"),
                      out=str(out / "run"), folds=2, val_fraction=0.5, tiled=str(out / "tiled"))
    run(cfg)
    return out


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["onnx", "torch"])
def test_infer_equals_the_distill_evaluation(trained, engine):
    runner = CliRunner()
    run_dir = trained / "run"
    if not (run_dir / "export_fold_1").exists():
        result = runner.invoke(app, ["export", str(run_dir), "--fold", "1"])
        assert result.exit_code == 0, result.output
    from lrmil.distill.calibration import read_calibration, softmax
    from lrmil.distill.layout import RunLayout
    from lrmil.distill.predictions import read_predictions_with_logits

    names, _, _, logits = read_predictions_with_logits(run_dir / "fold_1" / "pred_student.csv")
    temperature = read_calibration(RunLayout(run_dir)).temperature
    assert temperature != 1.0
    expected = dict(zip(names, softmax(logits, temperature), strict=True))
    _, columns = _probs(run_dir / "fold_1" / "pred_student.csv")
    slides = [str(trained / "cohort" / "slides" / f"{name}.svs") for name in expected]
    out = trained / f"infer_{engine}"
    result = runner.invoke(app, ["infer", *slides, "--model", str(run_dir), "--fold", "1",
                                 "--engine", engine, "--out", str(out), "--workers", "1"])
    assert result.exit_code == 0, result.output
    got, got_columns = _probs(out / "predictions.csv")
    assert got_columns == columns and set(got) == set(expected)
    for name, probs in expected.items():
        np.testing.assert_allclose(got[name], probs, atol=2e-5, err_msg=name)
    assert len(list((out / "heatmaps").glob("*.png"))) == len(expected)
    assert len(list((out / "qupath").glob("*.geojson"))) == len(expected)
