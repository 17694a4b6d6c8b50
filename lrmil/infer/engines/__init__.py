"""Inference engines behind one protocol; each engine's heavy imports stay in its module."""

from __future__ import annotations

from pathlib import Path

import torch

from lrmil.errors import ConfigError, FileFormatError
from lrmil.infer.engines.base import Engine

ENGINES = ("torch", "onnx", "trt")


def load_engine(kind: str, run: str | Path, export_dir: str | Path | None = None,
                fold: int | None = None, device: str | None = None,
                ensemble: bool = False) -> Engine:
    """The engine `kind` for the final model of `run` (default), fold `fold`'s student, or the
    fold students' mean (`ensemble`). onnx/trt load that model's export folder (RUN/export,
    RUN/export_fold_<k>, RUN/export_ensemble; or `export_dir`) and refuse artifacts exported
    from other weights than the run's current ones, or of another model than the one asked."""
    from lrmil.distill.layout import RunLayout
    from lrmil.export.source import read_run_config, run_sha256

    run = Path(run)
    if kind not in ENGINES:
        raise ConfigError(f"--engine must be one of {', '.join(ENGINES)}, got {kind!r}")
    if ensemble and fold is not None:
        raise ConfigError("give --fold K or --ensemble, not both")
    if kind == "trt":  # say what is missing before touching the run
        from lrmil.export.tensorrt import require_tensorrt

        require_tensorrt()
    read_run_config(run)
    if kind == "torch":
        from lrmil.export.source import load_run
        from lrmil.infer.engines.torch_engine import TorchEngine

        model = load_run(run, fold, ensemble)
        dev = device or ("cuda" if torch.cuda.is_available() else "cpu")
        return TorchEngine(model.encoder, model.head, model.meta, dev)
    exported = (Path(export_dir) if export_dir is not None
                else RunLayout(run).export_dir(fold, ensemble))
    option = " --ensemble" if ensemble else f" --fold {fold}" if fold is not None else ""
    if not exported.is_dir():
        if export_dir is None and fold is not None:  # a fold the run lacks: not "export it"
            from lrmil.distill.models import student_layout

            student_layout(RunLayout(run), fold)
        raise FileFormatError(f"{exported} does not exist: run `lrmil export {run}{option}` "
                              "first (or give its --export-dir)")
    if kind == "onnx":
        from lrmil.infer.engines.onnx_engine import OnnxEngine

        engine: Engine = OnnxEngine(exported, run_sha256(run))
    else:
        from lrmil.infer.engines.trt_engine import TrtEngine

        engine = TrtEngine(exported, run_sha256(run))
    asked = "ensemble" if ensemble else "final" if fold is None else "fold"
    meta = engine.meta
    if meta.model != asked or (asked == "fold" and meta.fold != fold):
        raise FileFormatError(
            f"{exported} holds {meta.describe()}, not the model asked for; re-run "
            f"`lrmil export {run}{option}` (or give its --export-dir)")
    return engine


__all__ = ["ENGINES", "Engine", "load_engine"]
