"""What the commands share: error reporting, the console, option types."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import typer

# Options that several commands share, defined once so their names and help agree.
MppOption = Annotated[
    float | None, typer.Option(help="Microns per pixel for all slides (overrides metadata).")
]
MppCsvOption = Annotated[
    Path | None, typer.Option(help="CSV `slide,mpp` giving each slide's microns per pixel.")
]
OverwriteOption = Annotated[bool, typer.Option(help="Redo slides whose outputs are complete.")]


@dataclass
class State:
    debug: bool = False


state = State()


@contextlib.contextmanager
def known_errors() -> Iterator[None]:
    """Turn a known error (LrmilError, bad input) into one red line and exit code 1."""
    from lrmil.errors import LrmilError

    try:
        yield
    except (LrmilError, FileNotFoundError, PermissionError) as exc:
        if state.debug:
            raise
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        typer.secho("interrupted", fg=typer.colors.YELLOW, err=True)
        sys.exit(130)
