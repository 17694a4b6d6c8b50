import json

import pytest
from lrmil.cli.main import app
from typer.testing import CliRunner

from lrmil.errors import EnvironmentMissingError
from lrmil.infer.engines.trt_engine import require_tensorrt


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
    assert "exported artifact not found (run `lrmil export`)" in result.output


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
