from lrmil.cli.main import app
from typer.testing import CliRunner

from lrmil import __version__


def test_info_reports_build_and_runtimes():
    result = CliRunner().invoke(app, ["info"])
    assert result.exit_code == 0, result.output
    for key in ("cuda kernels compiled", "cuda archs", "onnxruntime", "tensorrt", "torch"):
        assert key in result.output


def test_version_flag():
    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0
    assert __version__ in result.output
