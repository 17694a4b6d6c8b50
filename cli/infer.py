"""`lrmil infer`: LR-only inference from slide files with the torch, onnx or trt engine."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer
from lrmil.cli._common import MppCsvOption, MppOption, OverwriteOption, known_errors
from lrmil.cli.main import app


class EngineName(str, Enum):
    torch = "torch"
    onnx = "onnx"
    trt = "trt"


@app.command()
def infer(
    slides: Annotated[
        list[str],
        typer.Argument(help="Slide files, folders, glob patterns, or CSVs with a `slide` column."),
    ],
    model: Annotated[Path, typer.Option("--model", "-m", help="Run folder of `lrmil distill`.")],
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Output folder (predictions.csv, heatmaps/ ...).")
    ],
    engine: Annotated[
        EngineName, typer.Option(help="torch (eager), onnx (ONNX Runtime) or trt (TensorRT).")
    ] = EngineName.onnx,
    export_dir: Annotated[
        Path | None, typer.Option(help="Exported artifacts for onnx/trt (default RUN/export).")
    ] = None,
    fold: Annotated[int | None, typer.Option(help="Fold whose student to use (torch).")] = None,
    device: Annotated[
        str | None, typer.Option(help="torch engine device (default cuda if present, else cpu).")
    ] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="LR patches encoded per call.")] = 64,
    workers: Annotated[
        int, typer.Option(min=0, help="DataLoader processes reading patches (0: in-process).")
    ] = 2,
    mpp: MppOption = None,
    mpp_csv: MppCsvOption = None,
    top_k: Annotated[int, typer.Option(min=0, help="Top-attention patches outlined.")] = 5,
    thumbnail_side: Annotated[
        int, typer.Option(min=16, help="Longer side of the heatmap's thumbnail, pixels.")
    ] = 1024,
    overwrite: OverwriteOption = False,
) -> None:
    """Predict slides reading only LR patches: predictions.csv, heatmaps/<slide>.png,
    attention/<slide>.h5, timings.csv, summary.json. Resumable; one bad slide is reported and
    the others go on; exits 1 if any slide failed."""
    with known_errors():
        from lrmil.errors import ConfigError
        from lrmil.infer import infer_slides, load_engine
        from lrmil.wsi import load_mpp_csv

        if mpp is not None and mpp_csv is not None:
            raise ConfigError("give either --mpp or --mpp-csv, not both")
        override = load_mpp_csv(mpp_csv) if mpp_csv is not None else mpp
        runner = load_engine(engine.value, model, export_dir, fold, device)
        summary = infer_slides(
            slides, runner, out, mpp=override, batch_size=batch_size, workers=workers,
            overwrite=overwrite, thumbnail_side=thumbnail_side, top_k=top_k, progress=True,
        )
        _print(summary, out)
    if summary.failed:
        raise typer.Exit(1)


def _print(summary, out: Path) -> None:  # summary: lrmil.infer.InferSummary
    import csv

    from rich.console import Console
    from rich.table import Table

    console = Console(stderr=True)
    with open(out / "predictions.csv", newline="") as f:
        rows = list(csv.reader(f))
    table = Table(title=f"lrmil infer ({summary.engine}) -> {out}")
    for column in rows[0]:
        table.add_column(column)
    for row in rows[1:]:
        table.add_row(*row)
    console.print(table)
    timing = ", ".join(f"{k} {v:.2f}s" for k, v in summary.mean_timings.items())
    console.print(
        f"done {summary.done}, skipped {summary.skipped}, failed {summary.failed}; "
        f"{summary.patches:,} patches in {summary.seconds:.1f}s"
        + (f"; mean per slide: {timing}" if timing else "")
    )
    for slide, error in summary.errors:
        console.print(f"[red]failed[/] {slide}: {error}", soft_wrap=True)
    if summary.failed:
        console.print(f"errors written to {out / 'errors.csv'}")
