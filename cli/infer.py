"""`lrmil infer`: LR-only inference from slide files with the torch, onnx or trt engine."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer
from lrmil.cli._common import (
    MppCsvOption,
    MppOption,
    OverwriteOption,
    known_errors,
    mpp_override,
)
from lrmil.cli._runs import RecursiveOption, ShardOption, print_summary
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
        Path | None, typer.Option(help="Exported artifacts for onnx/trt (default RUN/export, "
                                  "RUN/export_fold_K or RUN/export_ensemble).")
    ] = None,
    fold: Annotated[
        int | None, typer.Option(help="Use fold K's student instead of the final model "
                                 "(RUN/final, trained on every labelled slide).")
    ] = None,
    ensemble: Annotated[
        bool, typer.Option(help="Average every fold's student: k MIL heads, and in stage-1 "
                           "encoder mode k LR encoders (k times the encoder's cost; adapter "
                           "mode or no stage 1 runs the LR encoder once).")
    ] = False,
    device: Annotated[
        str, typer.Option(help="torch engine device: auto (cuda if present; cuda:LOCAL_RANK under "
                          "torchrun), cpu, cuda or cuda:N.")
    ] = "auto",
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
    labels: Annotated[
        Path | None, typer.Option(help="Labels CSV (slide,label) of held-out slides: also "
                                  "write OUT/evaluation.json (AUC, accuracy, balanced accuracy, "
                                  "ECE, Brier) and print it.")
    ] = None,
    overwrite: OverwriteOption = False,
    recursive: RecursiveOption = False,
    shard: ShardOption = None,
) -> None:
    """Predict slides reading only LR patches with the final model (calibrated probabilities,
    the run's decision threshold): predictions.csv, heatmaps/<slide>.png,
    qupath/<slide>.geojson (File > Import objects in QuPath), attention/<slide>.h5,
    timings.csv, summary.json. Resumable; one bad slide is reported
    (OUT/errors.csv) and the others go on; exits 1 if any slide failed. Processes, torchrun
    ranks and hosts can share one --out (OUT/.claims)."""
    with known_errors():
        from lrmil.infer import infer_slides, load_engine
        from lrmil.runner.distributed import Ranks, rank_device
        from lrmil.utils.paths import check_out_path

        override = mpp_override(mpp, mpp_csv)
        check_out_path(out)  # before the engine loads
        torch_device = rank_device(device, Ranks.from_env(shard).local_rank)
        runner = load_engine(engine.value, model, export_dir, fold, torch_device, ensemble)
        from lrmil.infer.evaluate import evaluate, read_held_out_labels, summary_line

        truth = None
        if labels is not None:  # a bad labels CSV is refused before any slide is read
            from lrmil.tiling.inputs import collect_slides
            from lrmil.wsi import slide_name

            given = [slide_name(p) for p in collect_slides(slides, recursive=recursive).paths]
            truth = read_held_out_labels(labels, runner.meta.class_names, given)
        summary = infer_slides(
            slides, runner, out, mpp=override, batch_size=batch_size, workers=workers,
            overwrite=overwrite, thumbnail_side=thumbnail_side, top_k=top_k,
            recursive=recursive, shard=shard, progress=True,
        )
        if summary.reports:
            _print_predictions(summary, out, runner.meta.describe())
            if truth is not None and summary.listed:
                from rich.console import Console

                result = evaluate(out, truth, runner.meta.class_names)
                Console(stderr=True).print(f"evaluation ({out / 'evaluation.json'}): "
                                           f"{summary_line(result)}")
        print_summary(summary, f"lrmil infer ({summary.engine}) -> {out}")
    if summary.failed and summary.reports:
        raise typer.Exit(1)


def _print_predictions(summary, out: Path, model: str) -> None:  # lrmil.infer.InferSummary
    import csv

    from rich.console import Console
    from rich.table import Table

    console = Console(stderr=True)
    with open(out / "predictions.csv", newline="") as f:
        rows = list(csv.reader(f))
    table = Table(title=f"predictions of {model}, calibrated ({out / 'predictions.csv'})")
    for column in rows[0]:
        table.add_column(column)
    for row in rows[1:]:
        table.add_row(*row)
    console.print(table)
    timing = ", ".join(f"{k} {v:.2f}s" for k, v in summary.mean_timings.items())
    if timing:
        console.print(f"mean per slide done here: {timing}")
