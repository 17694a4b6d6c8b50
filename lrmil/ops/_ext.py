"""The conventions every fused op follows, and the plumbing they share.

- Kernels are `torch.library.custom_op`s with `register_fake` and `register_autograd` (what
  eager autograd, torch.compile and opcheck all see); no op keeps a second autograd path.
  Modules may compose the ops in an autograd.Function (GatedAttentionPool's training layer).
- Every bad argument raises ValueError naming the op, the argument and the expected shape or
  dtype (the C++ bindings raise std::invalid_argument, which pybind11 turns into ValueError);
  CUDA tensors with a CPU-only build raise lrmil.errors.EnvironmentMissingError.
- Device guard: Python makes the tensors' GPU current (`on_device`) around every kernel call
  and passes torch's current stream; the C++ side never calls cudaSetDevice.
- Accumulation: float32 for 16- and 32-bit inputs, float64 for float64 (`acc_dtype`).
"""

from __future__ import annotations

import contextlib

import torch

from lrmil._native import lib
from lrmil.errors import EnvironmentMissingError

__all__ = ["CUDA_COMPILED", "DTYPE_CODES", "FLOAT_DTYPES", "acc_dtype", "lib", "on_device"]

# Must match lrmil::DType in csrc/include/lrmil/common.h.
DTYPE_CODES = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2, torch.float64: 3}
FLOAT_DTYPES = tuple(DTYPE_CODES)


def _cuda_compiled() -> bool:
    try:
        return bool(lib().cuda_compiled())
    except EnvironmentMissingError:  # not built: every op call raises the clear error later
        return False


# Read once at import: a constant is free inside torch.compile(fullgraph=True) graphs, where a
# pybind call would break the graph.
CUDA_COMPILED = _cuda_compiled()


def cuda_compiled() -> bool:
    return CUDA_COMPILED


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the kernels accumulate in, and return attention / losses in."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def check_device_supported(op: str, tensor: torch.Tensor) -> None:
    """Refuse a device the build has no kernel for, instead of falling back silently."""
    if tensor.device.type == "cuda" and not CUDA_COMPILED:
        raise EnvironmentMissingError(
            f"{op}: got CUDA tensors but lrmil was built without CUDA kernels; "
            "rebuild with nvcc available (LRMIL_CUDA=ON) or move the tensors to the CPU"
        )
    if tensor.device.type not in ("cpu", "cuda"):
        raise ValueError(f"{op}: unsupported device {tensor.device}")


def check_same_device(op: str, **tensors: torch.Tensor) -> None:
    """All tensors on the first one's device, and a device the build supports."""
    (first, device), *rest = ((name, t.device) for name, t in tensors.items())
    for name, t in tensors.items():
        if t.device != device:
            raise ValueError(
                f"{op}: all tensors must be on one device; {first} is on {device} "
                f"but {name} is on {t.device}"
            )
    check_device_supported(op, tensors[first])


def check_tensor(op: str, name: str, value: object, ndim: int, layout: str) -> torch.Tensor:
    """value is a tensor of ndim dimensions; the message shows the expected layout."""
    if not isinstance(value, torch.Tensor):
        raise ValueError(
            f"{op}: {name} must be a torch.Tensor {layout}, got {type(value).__name__}"
        )
    if value.dim() != ndim:
        raise ValueError(f"{op}: {name} must have shape {layout}, got {tuple(value.shape)}")
    return value


def check_float(
    op: str, name: str, value: torch.Tensor, like: tuple[str, torch.Tensor] | None = None
) -> None:
    """value is float32 / float16 / bfloat16 / float64, and has the dtype of `like`
    (a name and a tensor)."""
    if value.dtype not in FLOAT_DTYPES:
        raise ValueError(
            f"{op}: {name} must be float32, float16, bfloat16 or float64, got {value.dtype}"
        )
    if like is not None and value.dtype != like[1].dtype:
        raise ValueError(f"{op}: {name} has dtype {value.dtype} but {like[0]} has {like[1].dtype}")


def on_device(tensor: torch.Tensor) -> contextlib.AbstractContextManager:
    """Make the tensor's GPU current around a kernel call (restored afterwards), so that the
    stream handed over and the launch agree. A no-op on the CPU."""
    return torch.cuda.device(tensor.device) if tensor.is_cuda else contextlib.nullcontext()


def stream_of(tensor: torch.Tensor) -> int:
    """Raw handle of torch's current stream on the tensor's device (0 on the CPU)."""
    if tensor.device.type != "cuda":
        return 0
    return torch.cuda.current_stream(tensor.device).cuda_stream
