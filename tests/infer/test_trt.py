"""The TensorRT engine: pure-python parts everywhere; real plans only where TensorRT and a GPU
are present."""

import subprocess
import sys
import textwrap

import pytest
import torch

from lrmil.errors import ConfigError, EnvironmentMissingError, FileFormatError
from lrmil.export.tensorrt import ShapeRange, require_tensorrt
from lrmil.infer.engines.trt_engine import chunks, torch_dtype


def _trt_usable() -> bool:
    try:
        require_tensorrt()
    except EnvironmentMissingError:
        return False
    return True


def test_module_imports_without_tensorrt_and_fails_in_one_line_when_used():
    """In a process where `import tensorrt` fails: the engine and the plan builder import, and
    only using them raises the one-line EnvironmentMissingError."""
    code = textwrap.dedent("""
        import sys
        sys.modules["tensorrt"] = None  # `import tensorrt` now raises ImportError
        from lrmil.infer.engines import trt_engine  # noqa: F401 (imports without TensorRT)
        from lrmil.export import tensorrt
        from lrmil.errors import EnvironmentMissingError
        try:
            tensorrt.require_tensorrt()
        except EnvironmentMissingError as exc:
            print(exc)
        else:
            sys.exit("require_tensorrt() did not refuse")
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("\n") == 1 and "TensorRT is not installed" in done.stdout


def test_shape_ranges_are_validated():
    assert ShapeRange(1, 64, 256).opt == 64
    for bad in [(0, 1, 2), (1, 8, 4), (4, 2, 8)]:
        with pytest.raises(ConfigError, match="1 <= min <= opt <= max"):
            ShapeRange(*bad)


def test_batches_beyond_the_profile_are_split():
    assert chunks(5, 2) == [(0, 2), (2, 4), (4, 5)]
    assert chunks(3, 8) == [(0, 3)]


def test_tensorrt_types_map_to_torch():
    assert torch_dtype("HALF") is torch.float16 and torch_dtype("UINT8") is torch.uint8
    with pytest.raises(FileFormatError, match="FP8"):
        torch_dtype("FP8")


@pytest.mark.skipif(_trt_usable(), reason="TensorRT and a GPU are present")
def test_missing_tensorrt_or_gpu_is_one_clear_line():
    with pytest.raises(EnvironmentMissingError) as info:
        require_tensorrt()
    message = str(info.value)
    assert "\n" not in message and "use --engine onnx" in message
    assert "TensorRT" in message


@pytest.mark.cuda
@pytest.mark.trt
@pytest.mark.skipif(not _trt_usable(), reason="needs TensorRT 10+ and a CUDA GPU")
def test_trt_engine_agrees_with_torch(tiny_lr_model, tmp_path):
    from lrmil.export import export_model
    from lrmil.infer.engines.torch_engine import TorchEngine
    from lrmil.infer.engines.trt_engine import TrtEngine

    export_model(*tiny_lr_model, tmp_path, fmt="trt", fp16=True, batch=ShapeRange(1, 4, 8),
                 bag=ShapeRange(1, 64, 512))
    trt, ref = TrtEngine(tmp_path, "tiny"), TorchEngine(*tiny_lr_model, device="cuda")
    patches = torch.randint(0, 256, (11, 32, 32, 3), dtype=torch.uint8)  # > max batch: chunks
    assert (trt.encode(patches).cpu() - ref.encode(patches).cpu()).abs().max() < 1e-2
    features = torch.randn(300, 16, device="cuda")
    (p1, a1), (p2, a2) = trt.aggregate(features), ref.aggregate(features)
    assert (p1.cpu() - p2.cpu()).abs().max() < 1e-2 and (a1.cpu() - a2.cpu()).abs().max() < 1e-3
    with pytest.raises(ConfigError, match="--bag-max"):
        trt.aggregate(torch.randn(513, 16, device="cuda"))
