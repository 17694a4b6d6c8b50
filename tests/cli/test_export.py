import json

import pytest
from lrmil.cli.main import app
from typer.testing import CliRunner

from lrmil.errors import EnvironmentMissingError
from lrmil.export.tensorrt import require_tensorrt


def _invoke(*args):
    return CliRunner().invoke(app, [*map(str, args)])


def _fake_run(path, lrmil_version="0.1.0", student=True):
    (path / "fold_1").mkdir(parents=True)
    (path / "config.json").write_text(json.dumps({"versions": {"lrmil": lrmil_version}}))
    if student:
        (path / "fold_1" / "student.safetensors").write_bytes(b"")
    return path


def test_missing_run_folder_is_one_clear_line(tmp_path):
    result = _invoke("export", tmp_path / "nope")
    assert result.exit_code == 1
    assert result.output.strip() == (f"error: run folder {tmp_path / 'nope'} does not exist "
                                     "(give the --out folder of `lrmil distill`)")


def test_run_from_another_lrmil_version_is_refused(tmp_path):
    run = _fake_run(tmp_path / "run", lrmil_version="9.3.0")
    result = _invoke("export", run)
    assert result.exit_code == 1
    assert "made by lrmil 9.3.0" in result.output and "re-run `lrmil distill`" in result.output


def test_run_with_missing_files_is_refused(tmp_path):
    run = _fake_run(tmp_path / "run", student=False)
    result = _invoke("export", run)
    assert result.exit_code == 1 and "no trained student" in result.output
    (run / "config.json").unlink()
    result = _invoke("export", run)
    assert result.exit_code == 1 and "config.json is missing" in result.output


def test_bad_format_is_refused_by_the_option(tmp_path):
    result = _invoke("export", tmp_path, "--format", "tflite")
    assert result.exit_code == 2


def test_trt_without_tensorrt_names_what_is_missing(tmp_path):
    try:
        require_tensorrt()
        pytest.skip("TensorRT and a GPU are present")
    except EnvironmentMissingError:
        pass
    run = _fake_run(tmp_path / "run")
    result = _invoke("export", run, "--format", "trt")
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "use --engine onnx" in lines[0]
