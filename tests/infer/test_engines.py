import pytest
import torch

from lrmil.errors import ConfigError, FileFormatError
from lrmil.infer.engines import load_engine
from lrmil.infer.engines.onnx_engine import OnnxEngine, providers


def test_onnx_providers_put_cuda_first_and_the_cpu_last(monkeypatch):
    import onnxruntime as ort

    monkeypatch.setattr(ort, "get_available_providers", lambda: [
        "AzureExecutionProvider", "CPUExecutionProvider", "CUDAExecutionProvider"])
    assert providers() == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CPUExecutionProvider"])
    assert providers() == ["CPUExecutionProvider"]


def _cuda_provider() -> bool:
    import onnxruntime as ort

    return torch.cuda.is_available() and "CUDAExecutionProvider" in ort.get_available_providers()


@pytest.mark.cuda
@pytest.mark.skipif(not _cuda_provider(), reason="needs a GPU and onnxruntime-gpu")
def test_onnx_runs_on_cuda_where_present(tiny_lr_export):
    engine = OnnxEngine(tiny_lr_export)
    assert engine.providers[0] == "CUDAExecutionProvider"
    assert engine._encoder.get_providers()[0] == "CUDAExecutionProvider"


@pytest.mark.parametrize("batch", [1, 7])
def test_torch_and_onnx_encoders_agree(torch_engine, onnx_engine, batch):
    patches = torch.randint(0, 256, (batch, 32, 32, 3), dtype=torch.uint8)
    a, b = torch_engine.encode(patches), onnx_engine.encode(patches)
    assert a.shape == b.shape == (batch, 16)
    assert (a - b).abs().max() < 1e-5


@pytest.mark.parametrize("n", [1, 2, 1000])
def test_torch_and_onnx_heads_agree(torch_engine, onnx_engine, n):
    features = torch.randn(n, 16) * 3
    (p1, a1), (p2, a2) = torch_engine.aggregate(features), onnx_engine.aggregate(features)
    assert p1.shape == p2.shape == (3,) and a1.shape == a2.shape == (n,)
    assert (p1 - p2).abs().max() < 1e-5
    assert (a1 - a2).abs().max() < 1e-6
    assert torch.isclose(a2.sum(), torch.tensor(1.0), atol=1e-5)


def test_engine_metadata_comes_from_the_sidecar(onnx_engine, tiny_lr_model):
    assert onnx_engine.meta == tiny_lr_model[2]


def test_onnx_engine_refuses_an_export_of_other_weights(tiny_lr_export):
    with pytest.raises(FileFormatError, match="weights changed since this export"):
        OnnxEngine(tiny_lr_export, source_sha256="a-retrained-run")


def test_onnx_engine_refuses_a_missing_export(tmp_path):
    with pytest.raises(FileFormatError, match="not found"):
        OnnxEngine(tmp_path)


def test_load_engine_refuses_unknown_engines_and_bad_runs(tmp_path):
    with pytest.raises(ConfigError, match="--engine must be one of torch, onnx, trt"):
        load_engine("tvm", tmp_path)
    with pytest.raises(FileFormatError, match="config.json is missing"):
        load_engine("onnx", tmp_path)
    with pytest.raises(FileFormatError, match="does not exist"):
        load_engine("torch", tmp_path / "nope")
