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


def cuda_version_text(version: int) -> str:
    """CUDA's integer encoding (1000 * major + 10 * minor) as "major.minor"."""
    return f"{version // 1000}.{version % 1000 // 10}" if version else "none"


def cuda_findings(built: int, driver: int, torch_cuda: str | None, lrmil_devices: int,
                  torch_devices: int) -> list[str]:
    """What stops lrmil's CUDA kernels from sharing the GPU with torch, one sentence each."""
    if not built:
        return []
    findings = []
    if driver and driver < built:
        findings.append(f"the driver supports CUDA up to {cuda_version_text(driver)}, lrmil's "
                        f"kernels need {cuda_version_text(built)}: update the driver or rebuild "
                        "with an older toolkit")
    if torch_cuda and torch_cuda.split(".")[0] != str(built // 1000):
        findings.append(f"torch uses CUDA {torch_cuda}, lrmil's kernels {cuda_version_text(built)}:"
                        " two runtimes in one process; rebuild with the matching toolkit "
                        f"(CUDACXX=/usr/local/cuda-{torch_cuda}/bin/nvcc make build)")
    if lrmil_devices != torch_devices:
        findings.append(f"lrmil's runtime sees {lrmil_devices} GPU(s), torch {torch_devices}")
    return findings


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
    info["cuda runtime (lrmil)"] = (f"{cuda_version_text(c.cuda_runtime_version())} loaded, "
                                    f"built with {cuda_version_text(c.cuda_build_version())}")
    info["cuda driver"] = cuda_version_text(c.cuda_driver_version())
    info["cuda devices (lrmil runtime)"] = c.cuda_device_count()
    info["torch cuda"] = torch.version.cuda or "-"
    torch_devices = torch.cuda.device_count() if torch.cuda.is_available() else 0
    findings = cuda_findings(c.cuda_build_version(), c.cuda_driver_version(), torch.version.cuda,
                             c.cuda_device_count(), torch_devices)
    if not c.cuda_compiled():
        info["cuda check"] = "-"
    elif not c.cuda_driver_version():
        info["cuda check"] = "no CUDA driver: the CPU kernels run"
    else:
        info["cuda check"] = "; ".join(findings) or "ok"
    devices = ["cpu"]
    if torch.cuda.is_available():
        devices += [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    info["devices"] = ", ".join(devices)
    info["torch threads"] = torch.get_num_threads()
    info["onnxruntime"] = _module_version("onnxruntime") or "not installed"
    info["tensorrt"] = _module_version("tensorrt") or "not installed"
    return info
