"""`lrmil tile`: tissue mask, LR grid with HR children, coords files and thumbnails."""

from __future__ import annotations

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

# Options that are TilingConfig fields: a config file sets them, a flag given on the line wins.
CONFIG_OPTIONS = ("lr_mag", "hr_mag", "patch_size", "tissue_threshold", "child_threshold")


@app.command()
def tile(
    ctx: typer.Context,
    slides: Annotated[
        list[str],
        typer.Argument(help="Slide files, folders, glob patterns, or CSVs with a `slide` column."),
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder (coords/, thumbnails/).")],
    lr_mag: Annotated[float, typer.Option(help="Low (inference) magnification.")] = 5.0,
    hr_mag: Annotated[
        float, typer.Option(help="High (teacher) magnification; a multiple of --lr-mag.")
    ] = 20.0,
    patch_size: Annotated[
        int, typer.Option(help="Patch side in pixels at each magnification.")
    ] = 256,
    tissue_threshold: Annotated[
        float, typer.Option(help="Keep an LR patch whose tissue fraction is at least this.")
    ] = 0.25,
    child_threshold: Annotated[
        float, typer.Option(help="An HR child is valid if its tissue fraction is at least this.")
    ] = 0.25,
    mpp: MppOption = None,
    mpp_csv: MppCsvOption = None,
    workers: Annotated[int, typer.Option(min=1, help="Slides tiled in parallel processes.")] = 1,
    overwrite: OverwriteOption = False,
    recursive: RecursiveOption = False,
    shard: ShardOption = None,
    lr_grid: Annotated[
        Path | None,
        typer.Option(
            help="Folder of CLAM or TRIDENT coords files (<slide>.h5 or <slide>_patches.h5): "
            "their patch positions are the LR grid where the patches cover an LR patch at "
            "--lr-mag/--patch-size; HR children derived as usual.",
        ),
    ] = None,
    config_file: Annotated[
        Path | None,
        typer.Option(
            "--config",
            help="YAML/TOML file of tiling settings (these options, and `tissue:` mask "
            "parameters); options given on the command line win.",
        ),
    ] = None,
) -> None:
    """Tile slides: tissue mask, the LR grid, and r x r HR children per LR patch. Resumable;
    one bad slide is reported (OUT/errors.csv) and the others go on; exits 1 if any slide
    failed. Processes, torchrun ranks and hosts can share one --out (OUT/.claims)."""
    with known_errors():
        from lrmil.tiling import TilingConfig, tile_slides
        from lrmil.tiling.config import read_config_file

        override = mpp_override(mpp, mpp_csv)
        values = read_config_file(config_file) if config_file is not None else {}
        for name in CONFIG_OPTIONS:
            source = ctx.get_parameter_source(name)
            if name not in values or (source is not None and source.name != "DEFAULT"):
                values[name] = ctx.params[name]
        config = TilingConfig.from_dict(values, source=str(config_file or "options"))
        summary = tile_slides(
            slides, out, config, workers=workers, overwrite=overwrite, mpp=override,
            recursive=recursive, shard=shard, progress=True, lr_grid=lr_grid,
        )
        print_summary(summary, f"lrmil tile -> {out}")
    if summary.failed and summary.reports:
        raise typer.Exit(1)

