"""What the per-slide commands (tile, embed, infer) share: the options of the slide runner and
its summary on the console."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from lrmil.runner import RunSummary

RecursiveOption = Annotated[
    bool, typer.Option(help="Folders: take the slides in their subfolders too (GDC layout).")
]
ShardOption = Annotated[
    str | None,
    typer.Option(help="Do share I of N (I/N, 0 <= I < N) of the slides, e.g. a SLURM array task "
                 "`--shard $SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT`; torchrun splits by "
                 "itself."),
]


def print_summary(summary: RunSummary, title: str) -> None:
    """The run's counts, notes and failures (one line each), and where the records are.
    Under torchrun only rank 0 prints, for every rank."""
    if not summary.reports:
        return
    from rich.console import Console
    from rich.table import Table

    console = Console(stderr=True, soft_wrap=True, highlight=False)
    table = Table(title=title)
    columns = {"ok": summary.ok, "skipped": summary.skipped, "failed": summary.failed,
               "claimed elsewhere": summary.claimed_elsewhere}
    for column in [*columns, "patches", "seconds"]:
        table.add_column(column, justify="right")
    table.add_row(*map(str, columns.values()), f"{summary.patches:,}", f"{summary.seconds:.1f}")
    console.print(table)
    if summary.world_size > 1:
        kind = "ranks" if summary.coordinated else f"shards (this is shard {summary.rank})"
        console.print(f"{summary.world_size} {kind}; run records in {summary.out_dir / 'runs'}")
    for note in summary.notes:
        console.print(f"[yellow]note:[/] {note}")
    for result in summary.results:
        if result.status == "ok" and result.note:
            console.print(f"[yellow]{result.slide}:[/] {result.note}")
    for result in summary.errors:
        console.print(f"[red]failed:[/] {result.error}")  # names the file
    if summary.failed:
        console.print(f"errors written to {summary.out_dir / 'errors.csv'}")
