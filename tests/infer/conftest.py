import pytest

from lrmil.infer.engines.onnx_engine import OnnxEngine
from lrmil.infer.engines.torch_engine import TorchEngine


@pytest.fixture(scope="session")
def torch_engine(tiny_lr_model):
    return TorchEngine(*tiny_lr_model, device="cpu")


@pytest.fixture(scope="session")
def onnx_engine(tiny_lr_export):
    return OnnxEngine(tiny_lr_export, source_sha256="tiny")


@pytest.fixture(scope="session")
def slides(synth_slide_path, synth_negative_slide_path):
    return [synth_slide_path, synth_negative_slide_path]
