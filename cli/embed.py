"""`lrmil embed`: encode the LR and/or HR patches of tiled slides into features files."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer
from lrmil.cli._common import OverwriteOption, known_errors
from lrmil.cli._runs import ShardOption, print_summary
from lrmil.cli.main import app


class Mag(str, Enum):
    lr = "lr"
    hr = "hr"
    both = "both"


class Dtype(str, Enum):
    float32 = "float32"
    float16 = "float16"


def parse_encoder_args(items: list[str]) -> dict[str, Any]:
    """['init_values=1e-5', 'dynamic_img_size=true'] -> {'init_values': 1e-05, ...}."""
    import ast

    from lrmil.errors import ConfigError

    values: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--encoder-arg must be KEY=VALUE, got {item!r}")
        words = {"true": True, "false": False, "none": None}
        try:
            values[key] = words[text.lower()] if text.lower() in words else ast.literal_eval(text)
        except (ValueError, SyntaxError):
            values[key] = text
    return values


@app.command()
def embed(
    tiled_dir: Annotated[
        Path, typer.Argument(help="Output folder of `lrmil tile` (holds coords/).")
    ],
    out: Annotated[
        Path, typer.Option("--out", help="Features folder: OUT/lr/<slide>.h5, OUT/hr/<slide>.h5.")
    ],
    encoder: Annotated[
        str,
        typer.Option(
            help="lrmil-cnn, lrmil-vit-tiny, uni, conch-vit-b16, timm:<model> or "
            "torchvision:<model> (all but the lrmil-* built-ins need --weights or --random-init)."
        ),
    ] = "lrmil-cnn",
    weights: Annotated[
        Path | None, typer.Option(help="Encoder weights: .safetensors or a torch state dict.")
    ] = None,
    encoder_arg: Annotated[
        list[str] | None,
        typer.Option(help="Model constructor argument KEY=VALUE (timm/torchvision), repeatable."),
    ] = None,
    random_init: Annotated[
        bool, typer.Option(help="No weights file: the architecture's own initialisation, seeded "
                           "by --seed (tests, smoke runs).")
    ] = False,
    seed: Annotated[int, typer.Option(help="Seed of the encoder's initialisation (built-ins, "
                                      "--random-init).")] = 0,
    mag: Annotated[Mag, typer.Option(help="Magnifications to encode.")] = Mag.both,
    layers: Annotated[
        list[str] | None,
        typer.Option(
            help="Layers whose pooled embeddings go into HR files (stage-1 teacher); "
            "repeatable, or 'default'."
        ),
    ] = None,
    batch_size: Annotated[int, typer.Option(help="Patches per batch.")] = 64,
    workers: Annotated[int, typer.Option(help="DataLoader worker processes reading patches.")] = 0,
    device: Annotated[
        str, typer.Option(help="auto (cuda if present; cuda:LOCAL_RANK under torchrun), cpu, "
                          "cuda or cuda:N.")
    ] = "auto",
    dtype: Annotated[Dtype, typer.Option(help="Storage type of the features.")] = Dtype.float32,
    layers_dtype: Annotated[
        Dtype, typer.Option(help="Storage type of the HR files' layers/<name> (--layers): "
                            "float16 halves a cohort's largest arrays at no measured accuracy "
                            "cost (bench/results/accuracy.md).")
    ] = Dtype.float16,
    overwrite: OverwriteOption = False,
    shard: ShardOption = None,
) -> None:
    """Encode the patches of tiled slides, read on the fly, into one features HDF5 per slide and
    magnification (TRIDENT-compatible; HR files with parent/child links). Complete outputs that
    match their inputs are skipped; failing slides go to OUT/errors.csv. Processes, torchrun
    ranks and hosts can share one --out (OUT/.claims)."""
    with known_errors():
        from lrmil.embed import embed_slides

        summary = embed_slides(
            tiled_dir,
            encoder,
            out,
            mag=mag.value,
            weights=weights,
            seed=seed,
            model_kwargs=parse_encoder_args(encoder_arg or []),
            random_init=random_init,
            batch_size=batch_size,
            workers=workers,
            device=device,
            layers=layers or (),
            dtype=dtype.value,
            layers_dtype=layers_dtype.value,
            overwrite=overwrite,
            shard=shard,
            progress=True,
        )
        print_summary(summary, f"lrmil embed ({encoder}, {mag.value}) -> {out}")
    if summary.failed and summary.reports:
        raise typer.Exit(1)
