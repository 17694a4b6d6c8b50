"""What this installation has: versions, the compiled core, devices, optional runtimes.

Also the `versions()` record written into every output file."""

from __future__ import annotations

import importlib
import platform


def _module_version(name: str) -> str | None:
    try:
        module = importlib.import_module(name)
    except Exception:  # an optional runtime that is absent or broken
        return None
    return getattr(module, "__version__", "unknown")


def versions() -> dict[str, str]:
    """Versions recorded in every output (lrmil, python, torch, numpy). Torch's comes from the
    package metadata: importing it would cost torch-free paths (tiling) a second or more."""
    from importlib import metadata

    import numpy

    from lrmil import __version__

    try:
        torch_version = metadata.version("torch")
    except metadata.PackageNotFoundError:
        torch_version = "not installed"
    return {
        "lrmil": __version__,
        "python": platform.python_version(),
        "torch": torch_version,
        "numpy": numpy.__version__,
    }


def collect() -> dict[str, object]:
    import torch

    from lrmil.ops import _ext

    info: dict[str, object] = dict(versions())
    try:
        import openslide

        info["openslide"] = openslide.__library_version__
    except Exception as exc:  # reported, not fatal
        info["openslide"] = f"unavailable ({exc})"
    c = _ext.lib()
    info["cuda kernels compiled"] = c.cuda_compiled()
    info["cuda archs"] = c.cuda_archs() or "-"
    info["cuda devices (lrmil runtime)"] = c.cuda_device_count()
    info["torch cuda"] = torch.version.cuda or "-"
    devices = ["cpu"]
    if torch.cuda.is_available():
        devices += [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    info["devices"] = ", ".join(devices)
    info["torch threads"] = torch.get_num_threads()
    info["onnxruntime"] = _module_version("onnxruntime") or "not installed"
    info["tensorrt"] = _module_version("tensorrt") or "not installed"
    return info
