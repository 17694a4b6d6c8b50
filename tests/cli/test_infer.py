import json

import pytest
from lrmil.cli.main import app
from typer.testing import CliRunner

from lrmil.errors import EnvironmentMissingError
from lrmil.export.tensorrt import require_tensorrt


def _invoke(*args):
    return CliRunner().invoke(app, [*map(str, args)])


@pytest.fixture
def run(tmp_path):
    (tmp_path / "run" / "fold_1").mkdir(parents=True)
    (tmp_path / "run" / "config.json").write_text(json.dumps({"versions": {"lrmil": "0.1.0"}}))
    (tmp_path / "run" / "fold_1" / "student.safetensors").write_bytes(b"")
    return tmp_path / "run"


def test_trt_without_tensorrt_or_gpu_is_one_line_suggesting_onnx(run, tmp_path):
    try:
        require_tensorrt()
        pytest.skip("TensorRT and a GPU are present")
    except EnvironmentMissingError:
        pass
    result = _invoke("infer", tmp_path / "a.svs", "--model", run, "--out", tmp_path / "out",
                     "--engine", "trt")
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: TensorRT")
    assert "use --engine onnx" in lines[0]


def test_onnx_without_an_export_says_to_run_export(run, tmp_path):
    result = _invoke("infer", tmp_path / "a.svs", "--model", run, "--out", tmp_path / "out")
    assert result.exit_code == 1
    assert f"{run / 'export'} does not exist: run `lrmil export {run}` first" in result.output


def test_missing_model_and_conflicting_options_are_refused(run, tmp_path):
    result = _invoke("infer", tmp_path / "a.svs", "--model", tmp_path / "nope", "--out",
                     tmp_path / "out")
    assert result.exit_code == 1 and "does not exist" in result.output
    result = _invoke("infer", tmp_path / "a.svs", "--model", run, "--out", tmp_path / "out",
                     "--mpp", "0.5", "--mpp-csv", tmp_path / "mpp.csv")
    assert result.exit_code == 1 and "either --mpp or --mpp-csv" in result.output
    result = _invoke("infer", tmp_path / "a.svs", "--model", run, "--out", tmp_path / "out",
                     "--engine", "tvm")
    assert result.exit_code == 2


def test_help_lists_the_engines():
    result = _invoke("infer", "--help")
    assert result.exit_code == 0 and "torch" in result.output and "trt" in result.output


def test_export_then_infer_with_each_engine(tiny_run, synth_negative_slide_path, tmp_path):
    import csv

    result = _invoke("export", tiny_run)
    assert result.exit_code == 0, result.output
    assert {p.name for p in (tiny_run / "export").iterdir()} == {
        "encoder.onnx", "encoder.onnx.json", "mil.onnx", "mil.onnx.json"}
    probs = {}
    for engine in ("onnx", "torch"):
        out = tmp_path / engine
        result = _invoke("infer", synth_negative_slide_path, "--model", tiny_run, "--out", out,
                         "--engine", engine, "--workers", "0")
        assert result.exit_code == 0, result.output
        with open(out / "predictions.csv", newline="") as f:
            (row,) = list(csv.DictReader(f))
        probs[engine] = [float(row[f"prob_{c}"]) for c in ("class0", "class1", "class2")]
        assert (out / "heatmaps" / "negative.png").is_file()
    assert max(abs(a - b) for a, b in zip(probs["onnx"], probs["torch"], strict=True)) < 1e-5
    result = _invoke("infer", synth_negative_slide_path, "--model", tiny_run, "--out",
                     tmp_path / "fold1", "--fold", "1")
    assert result.exit_code == 1 and "export_fold_1 does not exist" in result.output
    assert f"lrmil export {tiny_run} --fold 1" in result.output
    result = _invoke("infer", synth_negative_slide_path, "--model", tiny_run, "--out",
                     tmp_path / "fold2", "--fold", "2")  # a fold the run lacks: not "export it"
    assert result.exit_code == 1 and "has no student for fold 2; folds with one: [1]" in \
        result.output
    result = _invoke("infer", synth_negative_slide_path, "--model", tiny_run, "--out",
                     tmp_path / "fold2", "--fold", "2", "--export-dir", tiny_run / "export")
    assert result.exit_code == 1
    assert "holds the final model, not the model asked for" in result.output
    (tiny_run / "fold_1" / "student.safetensors").write_bytes(b"retrained")
    result = _invoke("infer", synth_negative_slide_path, "--model", tiny_run, "--out",
                     tmp_path / "stale")
    assert result.exit_code == 1 and "weights changed since this export" in result.output


@pytest.mark.parametrize(("device", "message"), [
    ("gpu", "error: --device must be auto, cpu, cuda or cuda:N, got 'gpu'"),
    ("cuda:x", "error: --device must be auto, cpu, cuda or cuda:N, got 'cuda:x'"),
])
def test_a_bad_device_is_one_line(run, tmp_path, device, message):
    result = _invoke("infer", tmp_path / "a.svs", "--model", run, "--out", tmp_path / "out",
                     "--engine", "torch", "--device", device)
    assert result.exit_code == 1 and result.output.strip() == message


def test_cuda_without_cuda_is_one_line(run, tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    result = _invoke("infer", tmp_path / "a.svs", "--model", run, "--out", tmp_path / "out",
                     "--engine", "torch", "--device", "cuda")
    assert result.exit_code == 1
    assert result.output.strip() == ("error: --device cuda: torch sees no CUDA device here "
                                     "(use --device cpu, or auto)")


def test_out_that_is_a_file_is_one_line(run, tmp_path):
    (tmp_path / "taken").write_text("a file")
    result = _invoke("infer", tmp_path / "a.svs", "--model", run, "--out", tmp_path / "taken")
    assert result.exit_code == 1
    assert result.output.strip() == (f"error: {tmp_path / 'taken'}: --out must be a folder, and "
                                     "this is an existing file")


def test_a_10x_scan_is_inferred_at_5x(tiny_run, tmp_path, synth_negative_slide_path):
    """Inference reads only LR (5x) patches: a 10x scan works, no --hr-mag complaint."""
    import shutil

    scan = tmp_path / "tenx.svs"
    shutil.copy(synth_negative_slide_path, scan)
    assert _invoke("export", tiny_run).exit_code == 0
    result = _invoke("infer", scan, "--model", tiny_run, "--out", tmp_path / "out", "--mpp", "1.0",
                     "--workers", "0")
    assert result.exit_code == 0, result.output
    assert "--hr-mag" not in result.output
    result = _invoke("infer", scan, "--model", tiny_run, "--out", tmp_path / "out4",
                     "--mpp", "4.0", "--workers", "0")  # 2.5x: below the model's 5x
    assert result.exit_code == 1
    assert "the model's LR magnification 5x is higher than the scan's 2.5x" in result.output
