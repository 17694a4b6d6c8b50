from lrmil.cli.main import app
from typer.testing import CliRunner

from lrmil import __version__
from lrmil.info import cuda_findings, cuda_version_text


def test_info_reports_build_and_runtimes():
    result = CliRunner().invoke(app, ["info"])
    assert result.exit_code == 0, result.output
    for key in ("cuda kernels compiled", "cuda archs", "onnxruntime", "tensorrt", "torch"):
        assert key in result.output


def test_version_flag():
    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0
    assert __version__ in result.output


def test_info_reports_cuda_runtime_and_driver():
    result = CliRunner().invoke(app, ["info"])
    for key in ("cuda runtime (lrmil)", "cuda driver", "cuda check"):
        assert key in result.output


def test_cuda_findings_name_each_mismatch():
    assert cuda_findings(0, 0, "12.8", 0, 1) == []  # no kernels compiled: nothing to match
    assert cuda_findings(13000, 13000, "13.0", 1, 1) == []
    old_driver, = cuda_findings(13000, 12080, "13.0", 1, 1)
    assert "up to 12.8" in old_driver and "need 13.0" in old_driver
    other_torch, = cuda_findings(13000, 13000, "12.8", 1, 1)
    assert "torch uses CUDA 12.8" in other_torch and "cuda-12.8/bin/nvcc" in other_torch
    counts, = cuda_findings(13000, 13000, "13.0", 2, 1)
    assert "sees 2 GPU(s), torch 1" in counts
    assert len(cuda_findings(13000, 12080, "12.8", 0, 1)) == 3
    # a CPU-only torch beside a CUDA build: only the device counts can differ
    assert cuda_findings(13000, 0, None, 0, 0) == []


def test_cuda_version_text():
    assert cuda_version_text(13000) == "13.0"
    assert cuda_version_text(12080) == "12.8"
    assert cuda_version_text(0) == "none"
