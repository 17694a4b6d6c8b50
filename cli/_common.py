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


def mpp_override(mpp: float | None, mpp_csv: Path | None) -> float | dict[str, float] | None:
    """--mpp or --mpp-csv as tile and infer pass them on, checked before any slide is read."""
    from lrmil.errors import ConfigError
    from lrmil.wsi import load_mpp_csv
    from lrmil.wsi.mpp import check_mpp

    if mpp is not None and mpp_csv is not None:
        raise ConfigError("give either --mpp or --mpp-csv, not both")
    if mpp_csv is not None:
        return load_mpp_csv(mpp_csv)
    return None if mpp is None else check_mpp(mpp, "--mpp")


@dataclass
class State:
    debug: bool = False


state = State()


@contextlib.contextmanager
def known_errors() -> Iterator[None]:
    """Any error as one red line and exit code 1 (the traceback only with --debug): a known one
    (LrmilError, a missing or unreadable file) as it is; anything else as an internal error to
    report."""
    try:
        yield
    except (typer.Exit, typer.Abort, typer.TyperException):  # Typer's own signalling
        raise
    except KeyboardInterrupt:
        typer.secho("interrupted", fg=typer.colors.YELLOW, err=True)
        sys.exit(130)
    except Exception as exc:
        if state.debug:
            raise
        typer.secho(f"error: {one_line(exc)}", fg=typer.colors.RED, err=True)
        raise typer.Exit(1) from None


def one_line(exc: BaseException) -> str:
    """The message a user reads: a known error's text, else its type and text and how to get
    the traceback."""
    from lrmil.errors import LrmilError

    text = " ".join(str(exc).split())
    if isinstance(exc, (LrmilError, OSError)):
        return text
    return (f"internal error {type(exc).__name__}: {text} (a bug: rerun with --debug for the "
            "traceback and report it)")
