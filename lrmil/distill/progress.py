"""A rich display of a run's steps: one line per step with its epoch, loss and validation AUC."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn


@contextlib.contextmanager
def step_spinner(console: Console) -> Iterator[Callable]:
    """Yield an `on_step` hook for `lrmil.distill.run`."""
    with Progress(SpinnerColumn(), TextColumn("{task.description}"),
                  TextColumn("{task.fields[stats]}"), TimeElapsedColumn(),
                  console=console, transient=False) as progress:

        @contextlib.contextmanager
        def on_step(description: str) -> Iterator[Callable[[int, dict], None]]:
            task = progress.add_task(description, total=None, stats="")

            def tick(epoch: int, stats: dict[str, float]) -> None:
                progress.update(task, stats=f"epoch {epoch} loss {stats['loss']:.3f} "
                                            f"val AUC {stats['val_auc']:.3f}")

            try:
                yield tick
            finally:
                progress.update(task, total=1, completed=1)
                progress.stop_task(task)

        yield on_step
