"""Inference engines behind one protocol; each engine's heavy imports stay in its module."""

from __future__ import annotations

from pathlib import Path

import torch

from lrmil.errors import ConfigError, FileFormatError
from lrmil.infer.engines.base import Engine

ENGINES = ("torch", "onnx", "trt")


def load_engine(kind: str, run: str | Path, export_dir: str | Path | None = None,
                fold: int | None = None, device: str | None = None) -> Engine:
    """The engine `kind` for the student of `run`. onnx/trt load RUN/export (or `export_dir`) and
    refuse artifacts exported from other weights than the run's current ones, or from another
    fold than `fold` when one is given."""
    from lrmil.export.source import read_run_config, run_sha256

    run = Path(run)
    if kind not in ENGINES:
        raise ConfigError(f"--engine must be one of {', '.join(ENGINES)}, got {kind!r}")
    if kind == "trt":  # say what is missing before touching the run
        from lrmil.infer.engines.trt_engine import require_tensorrt

        require_tensorrt()
    read_run_config(run)
    if kind == "torch":
        from lrmil.export.source import load_run
        from lrmil.infer.engines.torch_engine import TorchEngine

        model = load_run(run, fold)
        dev = device or ("cuda" if torch.cuda.is_available() else "cpu")
        return TorchEngine(model.encoder, model.head, model.meta, dev)
    exported = Path(export_dir) if export_dir is not None else run / "export"
    if kind == "onnx":
        from lrmil.infer.engines.onnx_engine import OnnxEngine

        engine: Engine = OnnxEngine(exported, run_sha256(run))
    else:
        from lrmil.infer.engines.trt_engine import TrtEngine

        engine = TrtEngine(exported, run_sha256(run))
    if fold is not None and engine.meta.fold != fold:
        raise FileFormatError(
            f"{exported} holds the student of fold {engine.meta.fold or 'best'}, not fold {fold}; "
            f"re-run `lrmil export {run} --fold {fold}`"
        )
    return engine


__all__ = ["ENGINES", "Engine", "load_engine"]
