"""`lrmil distill`: teacher, stage 1, student and baselines over k folds, then the report."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from lrmil.cli._common import known_errors
from lrmil.cli.main import app

if TYPE_CHECKING:
    from rich.console import Console


@app.command()
def distill(
    features: Annotated[Path, typer.Option(help="Features folder with lr/ and hr/ (lrmil embed).")],
    labels: Annotated[Path, typer.Option(help="Labels CSV: slide,label[,patient].")],
    out: Annotated[Path, typer.Option(help="Run folder (created; an existing one is resumed).")],
    config: Annotated[
        Path | None, typer.Option(help="YAML or TOML file with any of the settings.")
    ] = None,
    tiled: Annotated[
        Path | None, typer.Option(help="Tiled folder (lrmil tile): slide paths for stage 1.")
    ] = None,
    shard: Annotated[
        str | None,
        typer.Option(help="Train share I of N (I/N, 0 <= I < N) of the folds, e.g. a SLURM array "
                     "task `--shard $SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT`; the shard "
                     "that completes the last fold writes the report. torchrun splits by "
                     "itself."),
    ] = None,
    overrides: Annotated[
        list[str] | None,
        typer.Argument(help="Dotted settings, e.g. folds=3 stage1.mode=adapter data.cache_gb=0",
                       show_default=False),
    ] = None,
) -> None:
    """Train the HR teacher, distil the LR encoder (stage 1), train the LR student and the LR
    baseline on every fold; print and write the report (metrics.json, report.md, roc.png)."""
    with known_errors():
        from rich.console import Console
        from rich.table import Table

        from lrmil.distill import load_config, run
        from lrmil.distill.report import summary_header, summary_rows

        cfg = load_config(config, overrides, features=str(features), labels=str(labels),
                          out=str(out), tiled=None if tiled is None else str(tiled))
        console = Console()
        progress = _progress(console, shard)
        with progress as on_step:
            report = run(cfg, on_step=on_step, on_note=console.print, shard=shard)
        if report is None:  # another rank or shard reports
            return
        table = Table(*summary_header(report), title=f"{len(report['folds'])}-fold test metrics")
        for row in summary_rows(report):
            table.add_row(*row)
        console.print(table)
        calibration = report.get("calibration")
        if calibration:
            from lrmil.distill.calibration import Calibration

            fitted = Calibration.from_dict(calibration)
            console.print(f"calibration: T = {fitted.temperature:.3f}, ECE "
                          f"{fitted.before['ece']:.3f} -> {fitted.after['ece']:.3f} "
                          "(out-of-fold, 15 bins)"
                          + (f"; threshold {fitted.threshold:.3f}" if fitted.threshold is not None
                             else ""))
            if fitted.note():
                console.print(f"[yellow]note:[/] {fitted.note()}")
        console.print(f"written: {out / 'metrics.json'}, {out / 'report.md'}, {out / 'roc.png'}, "
                      f"{out / 'calibration.png'}, {out / 'MODEL_CARD.md'}")


@contextlib.contextmanager
def step_spinner(console: Console) -> Iterator[Callable]:
    """An `on_step` hook for `lrmil.distill.run`: one line per step with its epoch, loss and
    validation AUC. The display starts with the first step: a run refused by its checks
    prints its one error line and nothing else."""
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    progress = Progress(SpinnerColumn(), TextColumn("{task.description}"),
                        TextColumn("{task.fields[stats]}"), TimeElapsedColumn(),
                        console=console, transient=False)

    @contextlib.contextmanager
    def on_step(description: str) -> Iterator[Callable[[int, dict], None]]:
        progress.start()  # a no-op once started
        task = progress.add_task(description, total=None, stats="")

        def tick(epoch: int, stats: dict[str, float]) -> None:
            val = stats["val_auc"]  # NaN for the final model: no validation slides
            progress.update(task, stats=f"epoch {epoch} loss {stats['loss']:.3f}"
                            + ("" if math.isnan(val) else f" val AUC {val:.3f}"))

        try:
            yield tick
        finally:
            progress.update(task, total=1, completed=1)
            progress.stop_task(task)

    try:
        yield on_step
    finally:
        if progress.tasks:
            progress.stop()


def _progress(console: Console, shard: str | None
              ) -> contextlib.AbstractContextManager[Callable]:
    """A spinner for one process; plain lines named by the rank or shard for several."""
    from lrmil.runner.distributed import Ranks

    ranks = Ranks.from_env(shard)
    if ranks.world == 1:
        return step_spinner(console)
    return step_lines(console, f"{'shard' if ranks.launcher == 'shard' else 'rank'} {ranks.rank}")


@contextlib.contextmanager
def step_lines(console: Console, who: str) -> Iterator[Callable]:
    """An `on_step` hook for one of several processes: a plain line when each step starts and
    ends, named by `who` (several processes share the terminal or the job's log)."""
    import time

    @contextlib.contextmanager
    def on_step(description: str) -> Iterator[None]:
        console.print(f"{who}: {description}")
        start = time.perf_counter()
        yield None
        console.print(f"{who}: {description}: done in {time.perf_counter() - start:.1f} s")

    yield on_step
