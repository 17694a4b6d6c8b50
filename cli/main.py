"""The `lrmil` Typer app. Commands live one per module and import heavy libraries only inside
the command, so `lrmil --help` stays fast."""

from __future__ import annotations

import contextlib
import importlib
import os
from collections.abc import Iterator
from typing import Annotated, Any

import typer
from typer.core import TyperGroup

try:  # Typer 0.2x vendors its Click: the usage errors it raises are typer._click's
    from typer._click import exceptions as click_errors
except ImportError:  # older Typer runs on Click itself
    from click import exceptions as click_errors  # type: ignore[no-redef]

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
    `lrmil --debug tile ...`): it is removed before the subcommand parses its options. A usage
    error (unknown option or command, missing argument, bad choice) is one line, exit 2."""

    def parse_args(self, ctx: typer.Context, args: list[str]) -> list[str]:
        from lrmil.cli import _common

        end = args.index("--") if "--" in args else len(args)
        _common.state.debug = "--debug" in args[:end]
        args = [a for a in args[:end] if a != "--debug"] + args[end:]
        with _usage_errors(ctx):
            return super().parse_args(ctx, args)

    def invoke(self, ctx: typer.Context) -> Any:
        with _usage_errors(ctx):  # the subcommand's parsing happens in here
            return super().invoke(ctx)


@contextlib.contextmanager
def _usage_errors(ctx: typer.Context) -> Iterator[None]:
    """Click's usage error as the commands' own one-line `error:` (instead of its Rich box)."""
    try:
        yield
    except click_errors.NoArgsIsHelpError:  # `lrmil` alone: the help, as asked
        raise
    except click_errors.UsageError as exc:
        # Some errors carry no context: the subcommand being parsed is the group's.
        path = (exc.ctx.command_path if exc.ctx is not None
                else " ".join(filter(None, [ctx.command_path, ctx.invoked_subcommand])))
        message = " ".join(exc.format_message().split())
        typer.secho(f"error: {path}: {message} (see '{path} --help')", fg=typer.colors.RED,
                    err=True)
        raise typer.Exit(exc.exit_code) from None


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
