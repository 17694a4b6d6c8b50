"""Building TensorRT plans from the exported ONNX graphs (export's work; the engine in
lrmil.infer.engines.trt_engine only runs them): the optimisation profile of the one dynamic
axis, what a plan is tied to (TensorRT version, GPU), and the one-line error where TensorRT or
a GPU is missing. `import tensorrt` happens only inside functions, so this module imports where
TensorRT is absent.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import torch

from lrmil.errors import ConfigError, EnvironmentMissingError, LrmilError
from lrmil.utils.atomic import atomic_path

MIN_MAJOR = 10


@dataclass(frozen=True)
class ShapeRange:
    """An optimisation profile for one dynamic axis (encoder batch or bag size)."""

    min: int
    opt: int
    max: int

    def __post_init__(self) -> None:
        if not 1 <= self.min <= self.opt <= self.max:
            raise ConfigError(
                f"shape range needs 1 <= min <= opt <= max, got {self.min}/{self.opt}/{self.max}"
            )


def require_tensorrt() -> ModuleType:
    """The `tensorrt` module, or a one-line error that says what is missing."""
    try:
        import tensorrt as trt
    except ImportError:
        raise EnvironmentMissingError(
            "TensorRT is not installed (pip install tensorrt; it needs an NVIDIA GPU); "
            "use --engine onnx"
        ) from None
    if int(trt.__version__.split(".")[0]) < MIN_MAJOR:
        raise EnvironmentMissingError(
            f"TensorRT {trt.__version__} is too old ({MIN_MAJOR}+ needed); use --engine onnx"
        )
    if not torch.cuda.is_available():
        raise EnvironmentMissingError(
            "TensorRT needs a CUDA GPU and torch sees none; use --engine onnx"
        )
    return trt


def environment_versions() -> dict[str, str]:
    """What a plan is tied to: the TensorRT version and the GPU (name, compute capability)."""
    trt = require_tensorrt()
    major, minor = torch.cuda.get_device_capability()
    return {"tensorrt": trt.__version__, "gpu": torch.cuda.get_device_name(),
            "compute_capability": f"{major}.{minor}"}


def build_plan(onnx_path: Path, plan_path: Path, input_name: str, axis: ShapeRange,
               fixed_dims: tuple[int, ...], fp16: bool) -> None:
    """Build a serialized engine from `onnx_path` with one optimisation profile whose leading
    axis of `input_name` spans `axis` (the other dims are `fixed_dims`); written atomically."""
    trt = require_tensorrt()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # explicit batch is the only mode in TensorRT 10
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise LrmilError(f"{onnx_path}: TensorRT cannot parse the graph: {errors}")
    config = builder.create_builder_config()
    if fp16:
        config.set_flag(trt.BuilderFlag.FP16)
    profile = builder.create_optimization_profile()
    profile.set_shape(input_name, (axis.min, *fixed_dims), (axis.opt, *fixed_dims),
                      (axis.max, *fixed_dims))
    config.add_optimization_profile(profile)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise LrmilError(f"{onnx_path}: TensorRT could not build an engine (see its log above)")
    with atomic_path(plan_path) as tmp:
        tmp.write_bytes(bytes(plan))
