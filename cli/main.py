"""The `lrmil` Typer app. Commands live one per module and import heavy libraries only inside
the command, so `lrmil --help` stays fast."""

from __future__ import annotations

import importlib
import os
from typing import Annotated

import typer
from typer.core import TyperGroup

# libgomp (loaded with torch, later) spin-waits between parallel regions by default, which costs
# tens of ms per fused-op call when the cores are shared; sleeping threads cost microseconds.
# Read once when libgomp loads, so it is set here; a user's own setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# torch's CPU allocator then backs allocations of 2 MiB or more with transparent huge pages:
# first-touch page faults of fresh gradients and features (one per 4 KiB otherwise) cost the
# fused ops' backward more system time than its arithmetic. Read once, at torch's first
# allocation; a user's own setting wins.
os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")


class DebugAnywhere(TyperGroup):
    """`--debug` is taken wherever it stands before a `--` (`lrmil tile ... --debug` as well as
    `lrmil --debug tile ...`): it is removed before the subcommand parses its options."""

    def parse_args(self, ctx: typer.Context, args: list[str]) -> list[str]:
        from lrmil.cli import _common

        end = args.index("--") if "--" in args else len(args)
        _common.state.debug = "--debug" in args[:end]
        args = [a for a in args[:end] if a != "--debug"] + args[end:]
        return super().parse_args(ctx, args)


app = typer.Typer(
    cls=DebugAnywhere,
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
    debug: Annotated[  # taken by DebugAnywhere, listed here for --help
        bool, typer.Option("--debug", help="Show the full traceback of an error (anywhere on the "
                           "command line).")
    ] = False,
) -> None:
    """lrmil: tile, embed, distill, export and infer, reading only low-resolution patches at
    inference."""


for _name in COMMAND_MODULES:
    importlib.import_module(f"lrmil.cli.{_name}")
