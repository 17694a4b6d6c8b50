"""The `lrmil` Typer app. Commands live one per module and import heavy libraries only inside
the command, so `lrmil --help` stays fast."""

from __future__ import annotations

import importlib
import os
from typing import Annotated

import typer

# libgomp (loaded with torch, later) spin-waits between parallel regions by default, which costs
# tens of ms per fused-op call when the cores are shared; sleeping threads cost microseconds.
# Read once when libgomp loads, so it is set here; a user's own setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# torch's CPU allocator then backs allocations of 2 MiB or more with transparent huge pages:
# first-touch page faults of fresh gradients and features (one per 4 KiB otherwise) cost the
# fused ops' backward more system time than its arithmetic. Read once, at torch's first
# allocation; a user's own setting wins.
os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")

app = typer.Typer(
    name="lrmil",
    help="Low-resolution MIL for whole slide images, distilled from high resolution.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

# Modules under lrmil.cli that each register one command on `app`.
COMMAND_MODULES = ["info", "distill", "synth", "embed", "tile", "export", "infer"]


def _version(value: bool) -> None:
    if value:
        from lrmil import __version__

        typer.echo(f"lrmil {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")
    ] = False,
    debug: Annotated[
        bool, typer.Option("--debug", help="Show full tracebacks for known errors.")
    ] = False,
) -> None:
    """lrmil: tile, embed, distill, export and infer, reading only low-resolution patches at
    inference."""
    from lrmil.cli import _common

    _common.state.debug = debug


for _name in COMMAND_MODULES:
    importlib.import_module(f"lrmil.cli.{_name}")
