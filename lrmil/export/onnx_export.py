"""ONNX export of one graph with one dynamic leading axis, checked against torch before it is
written.

The torch.export-based (dynamo) exporter is used; the TorchScript exporter is only a fallback
for a model torch.export cannot capture, and the reason is recorded in the sidecar.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from lrmil.errors import LrmilError
from lrmil.utils.atomic import atomic_path


class ExportCheckError(LrmilError):
    """The exported graph does not compute what the torch model computes."""


@dataclass
class OnnxExport:
    exporter: str  # "dynamo" | "torchscript"
    note: str | None  # why the fallback was needed
    max_abs_diff: dict[str, float]  # per output, over all check inputs


def export_onnx(module: nn.Module, example: torch.Tensor, path: Path, input_name: str,
                output_names: Sequence[str], axis_name: str,
                check_inputs: Sequence[torch.Tensor], atol: float = 1e-4,
                rtol: float = 1e-3) -> OnnxExport:
    """Export `module(x)` with axis 0 of `x` dynamic (>= 1) to `path` (atomically), after checking
    ONNX Runtime's outputs against torch's on `check_inputs`."""
    module = module.eval()
    with atomic_path(path) as tmp:
        exporter, note = _export(module, example, tmp, input_name, list(output_names), axis_name)
        diffs = check_onnx(tmp, module, check_inputs, input_name, output_names, atol, rtol,
                           label=path.name)
    return OnnxExport(exporter, note, diffs)


def _export(module: nn.Module, example: torch.Tensor, path: Path, input_name: str,
            output_names: list[str], axis_name: str) -> tuple[str, str | None]:
    quiet = contextlib.redirect_stdout(io.StringIO())  # the exporter prints its progress
    with warnings.catch_warnings(), quiet, _quiet_loggers("torch.onnx", "onnx_ir", "onnxscript"):
        warnings.simplefilter("ignore")
        try:
            program = torch.onnx.export(
                module, (example,), dynamo=True, verbose=False,
                dynamic_shapes=({0: torch.export.Dim(axis_name, min=1)},),
                input_names=[input_name], output_names=output_names,
            )
            program.save(str(path))
            return "dynamo", None
        except Exception as exc:  # any capture failure: fall back, and say why
            note = f"dynamo exporter failed ({type(exc).__name__}: {str(exc).splitlines()[0]})"
        axes = {name: {0: axis_name} for name in [input_name]}
        torch.onnx.export(
            module, (example,), str(path), dynamo=False, input_names=[input_name],
            output_names=output_names, dynamic_axes=axes,
        )
        return "torchscript", note


@contextlib.contextmanager
def _quiet_loggers(*names: str) -> Iterator[None]:
    """Silence the exporters' warnings about ops lrmil never uses (torchvision, ...)."""
    loggers = [logging.getLogger(name) for name in names]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def check_onnx(path: Path, module: nn.Module, inputs: Sequence[torch.Tensor], input_name: str,
               output_names: Sequence[str], atol: float, rtol: float,
               label: str | None = None) -> dict[str, float]:
    """Max abs difference per output between ONNX Runtime (CPU) and torch; raises if any
    element is beyond atol + rtol * |torch|."""
    import onnxruntime as ort

    label = label or path.name
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    worst = dict.fromkeys(output_names, 0.0)
    for x in inputs:
        with torch.inference_mode():
            expected = module(x)
        expected = expected if isinstance(expected, tuple) else (expected,)
        got = session.run(list(output_names), {input_name: x.numpy()})
        for name, want, have in zip(output_names, expected, got, strict=True):
            want = want.float().numpy()
            if want.shape != have.shape:
                raise ExportCheckError(
                    f"{label}: output {name} has shape {have.shape}, torch gives {want.shape}"
                )
            diff = np.abs(have.astype(np.float32) - want)
            worst[name] = max(worst[name], float(diff.max(initial=0.0)))
            if np.any(diff > atol + rtol * np.abs(want)):
                raise ExportCheckError(
                    f"{label}: output {name} differs from torch by {diff.max():.3g} "
                    f"(input shape {tuple(x.shape)}); the graph was not written"
                )
    return worst
