"""`lrmil export`: the LR encoder and MIL head of a run to ONNX or TensorRT, with sidecars."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from lrmil.cli._common import known_errors
from lrmil.cli.main import app

if TYPE_CHECKING:
    from lrmil.export.tensorrt import ShapeRange


class Format(str, Enum):
    onnx = "onnx"
    trt = "trt"


@app.command()
def export(
    run: Annotated[Path, typer.Argument(help="Run folder written by `lrmil distill`.")],
    format: Annotated[
        Format, typer.Option("--format", "-f", help="onnx, or trt (TensorRT plans; needs a GPU).")
    ] = Format.onnx,
    fp16: Annotated[
        bool, typer.Option(help="Build TensorRT plans in fp16 (--format trt).")
    ] = False,
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Output folder (default RUN/export, "
                                  "RUN/export_fold_K, RUN/export_ensemble).")
    ] = None,
    fold: Annotated[
        int | None, typer.Option(help="Export fold K's student instead of the final model "
                                 "(RUN/final, trained on every labelled slide).")
    ] = None,
    ensemble: Annotated[
        bool, typer.Option(help="Export the mean of every fold's student: k MIL heads, and in "
                           "stage-1 encoder mode k LR encoders (k times the encoder's cost; "
                           "adapter mode or no stage 1 runs the LR encoder once).")
    ] = False,
    batch_opt: Annotated[int, typer.Option(help="TensorRT encoder batch: optimal size.")] = 64,
    batch_max: Annotated[int, typer.Option(help="TensorRT encoder batch: maximum.")] = 256,
    bag_opt: Annotated[int, typer.Option(help="TensorRT bag size (LR patches): optimal.")] = 2048,
    bag_max: Annotated[int, typer.Option(help="TensorRT bag size (LR patches): maximum.")] = 65536,
    input_dtype: Annotated[
        str, typer.Option(help="Encoder input: uint8 pixels, or float32 pixels in 0..255.")
    ] = "uint8",
) -> None:
    """Export the final model's LR encoder (uint8 patches -> embeddings, preprocessing
    included) and MIL head (one bag -> calibrated probabilities + attention), both checked
    against torch first; updates RUN/MODEL_CARD.md."""
    with known_errors():
        from rich.console import Console
        from rich.table import Table

        from lrmil.export import export_run
        from lrmil.export.sidecar import read_sidecar

        artifacts = export_run(
            run, out, format.value, fp16, fold, _profile("batch", batch_opt, batch_max),
            _profile("bag", bag_opt, bag_max), input_dtype, ensemble,
        )
        meta = read_sidecar(artifacts["mil"]).model
        table = Table(title=f"lrmil export of {meta.describe()} -> "
                      f"{next(iter(artifacts.values())).parent}")
        for column in ("artifact", "input", "exporter", "max |onnx - torch|"):
            table.add_column(column)
        for path in artifacts.values():
            side = read_sidecar(path)
            spec = side.inputs[0]
            shape = "x".join(map(str, spec.shape))
            diff = max(side.max_abs_diff.values(), default=0.0)
            table.add_row(path.name, f"{spec.name} {spec.dtype} {shape}", side.exporter,
                          f"{diff:.2e}")
        Console(stderr=True).print(table)


def _profile(axis: str, opt: int, largest: int) -> ShapeRange:
    """--AXIS-opt / --AXIS-max as a TensorRT profile, refused naming both options."""
    from lrmil.errors import ConfigError
    from lrmil.export.tensorrt import ShapeRange

    if not 1 <= opt <= largest:
        raise ConfigError(f"--{axis}-opt {opt} and --{axis}-max {largest} must satisfy "
                          f"1 <= --{axis}-opt <= --{axis}-max")
    return ShapeRange(1, opt, largest)
