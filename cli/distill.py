"""`lrmil distill`: teacher, stage 1, student and baselines over k folds, then the report."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from lrmil.cli._common import known_errors
from lrmil.cli.main import app


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
    overrides: Annotated[
        list[str] | None,
        typer.Argument(help="Dotted settings, e.g. folds=3 stage1.mode=adapter kd.lambda_bag=0.5",
                       show_default=False),
    ] = None,
) -> None:
    """Train the HR teacher, distil the LR encoder (stage 1), train the LR student and the LR
    baseline on every fold; print and write the report (metrics.json, report.md, roc.png)."""
    with known_errors():
        from rich.console import Console
        from rich.table import Table

        from lrmil.distill import load_config, run
        from lrmil.distill.progress import step_spinner
        from lrmil.distill.report import SUMMARY_HEADER, summary_rows

        cfg = load_config(config, overrides, features=str(features), labels=str(labels),
                          out=str(out), tiled=None if tiled is None else str(tiled))
        console = Console()
        with step_spinner(console) as on_step:
            report = run(cfg, on_step=on_step)
        table = Table(*SUMMARY_HEADER, title=f"{len(report['folds'])}-fold test metrics")
        for row in summary_rows(report):
            table.add_row(*row)
        console.print(table)
        console.print(f"written: {out / 'metrics.json'}, {out / 'report.md'}, {out / 'roc.png'}")
