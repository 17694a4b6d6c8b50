"""TensorRT 10+ engine: plans built by `lrmil export` (lrmil.export.tensorrt), run through the
name-based API (`num_io_tensors`, `get_tensor_name`, `set_input_shape`, `set_tensor_address`,
`execute_async_v3`) with torch tensors as the I/O buffers on torch's current CUDA stream.

`import tensorrt` happens only inside functions, so this module imports (and its pure-python
parts work) where TensorRT is absent.
"""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

import torch

from lrmil import __version__
from lrmil.errors import ConfigError, FileFormatError, LrmilError
from lrmil.export.graphs import ENCODER_INPUT, ENCODER_OUTPUT, HEAD_INPUT, HEAD_OUTPUTS
from lrmil.export.sidecar import artifact_path, check_pair, check_sidecar
from lrmil.export.tensorrt import environment_versions, require_tensorrt

_TORCH_DTYPES = {
    "FLOAT": torch.float32, "HALF": torch.float16, "BF16": torch.bfloat16,
    "INT8": torch.int8, "UINT8": torch.uint8, "INT32": torch.int32, "INT64": torch.int64,
    "BOOL": torch.bool,
}


def torch_dtype(trt_name: str) -> torch.dtype:
    """torch dtype for a TensorRT DataType name ("FLOAT", "HALF", ...)."""
    try:
        return _TORCH_DTYPES[trt_name]
    except KeyError:
        raise FileFormatError(f"TensorRT tensor type {trt_name} has no torch equivalent") from None


def chunks(n: int, size: int) -> list[tuple[int, int]]:
    """[start, stop) ranges of at most `size` covering 0..n (a batch beyond the profile's max)."""
    return [(i, min(i + size, n)) for i in range(0, n, size)]


class _Plan:
    """One deserialized engine and its execution context, called with torch tensors."""

    def __init__(self, trt: ModuleType, path: Path) -> None:
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engine = runtime.deserialize_cuda_engine(path.read_bytes())
        if self.engine is None:
            raise FileFormatError(f"{path}: TensorRT cannot load this plan; re-run `lrmil export`")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        is_input = {n: self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT for n in names}
        self.outputs = [n for n in names if not is_input[n]]
        self.dtypes = {n: torch_dtype(self.engine.get_tensor_dtype(n).name) for n in names}

    def __call__(self, inputs: dict[str, torch.Tensor], outputs: list[str]) -> list[torch.Tensor]:
        stream = torch.cuda.current_stream()
        held = []  # keep the converted inputs alive until the stream has run
        for name, tensor in inputs.items():
            t = tensor.to("cuda", self.dtypes[name], non_blocking=True).contiguous()
            held.append(t)
            self.context.set_input_shape(name, tuple(t.shape))
            self.context.set_tensor_address(name, t.data_ptr())
        results = {}
        for name in self.outputs:
            shape = tuple(self.context.get_tensor_shape(name))
            results[name] = torch.empty(shape, dtype=self.dtypes[name], device="cuda")
            self.context.set_tensor_address(name, results[name].data_ptr())
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise LrmilError("TensorRT execution failed (see its log above)")
        return [results[name].float() for name in outputs]


class TrtEngine:
    name = "trt"

    def __init__(self, export_dir: Path, source_sha256: str | None = None) -> None:
        trt = require_tensorrt()
        versions = {"lrmil": __version__, **environment_versions()}
        paths = {k: artifact_path(export_dir, k, "trt") for k in ("encoder", "mil")}
        sidecars = {k: check_sidecar(p, k, "trt", versions, source_sha256)
                    for k, p in paths.items()}
        check_pair(sidecars["encoder"], sidecars["mil"])
        self.meta = sidecars["mil"].model
        self.device = torch.device("cuda", torch.cuda.current_device())
        self._max_batch = sidecars["encoder"].input(ENCODER_INPUT).max[0]
        self._max_bag = sidecars["mil"].input(HEAD_INPUT).max[0]
        self._encoder = _Plan(trt, paths["encoder"])
        self._head = _Plan(trt, paths["mil"])

    def encode(self, patches: torch.Tensor) -> torch.Tensor:
        parts = [self._encoder({ENCODER_INPUT: patches[a:b]}, [ENCODER_OUTPUT])[0]
                 for a, b in chunks(len(patches), self._max_batch)]
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    def aggregate(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if len(features) > self._max_bag:
            raise ConfigError(
                f"a bag of {len(features)} patches exceeds the TensorRT plan's maximum bag size "
                f"{self._max_bag}; re-export with a larger --bag-max"
            )
        probs, attn = self._head({HEAD_INPUT: features}, list(HEAD_OUTPUTS))
        return probs, attn
