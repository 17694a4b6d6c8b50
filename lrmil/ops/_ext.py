"""Access to the compiled core `lrmil._C` and the plumbing every op shares: dtype codes, raw
pointers, element strides and the current CUDA stream."""

from __future__ import annotations

import functools

import torch

from lrmil.errors import EnvironmentMissingError

# Must match lrmil::DType in csrc/include/lrmil/common.h.
DTYPE_CODES = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2, torch.float64: 3}


@functools.cache
def lib():
    """The compiled module; a clear error when the package was installed without building it."""
    try:
        from lrmil import _C
    except ImportError as exc:  # pragma: no cover - only in a broken install
        raise EnvironmentMissingError(
            f"lrmil's compiled core (lrmil._C) is missing: reinstall lrmil ({exc})"
        ) from exc
    return _C


def cuda_compiled() -> bool:
    return bool(lib().cuda_compiled())


def check_device_supported(op: str, tensor: torch.Tensor) -> None:
    """Refuse a device the build has no kernel for, instead of falling back silently."""
    if tensor.device.type == "cuda" and not cuda_compiled():
        raise EnvironmentMissingError(
            f"{op}: got CUDA tensors but lrmil was built without CUDA kernels; "
            "rebuild with nvcc available (LRMIL_CUDA=ON) or move the tensors to the CPU"
        )
    if tensor.device.type not in ("cpu", "cuda"):
        raise ValueError(f"{op}: unsupported device {tensor.device}")


def stream_of(tensor: torch.Tensor) -> int:
    """Raw handle of torch's current stream on the tensor's device (0 on the CPU)."""
    if tensor.device.type != "cuda":
        return 0
    return torch.cuda.current_stream(tensor.device).cuda_stream
