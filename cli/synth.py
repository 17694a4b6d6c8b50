"""`lrmil synth`: write a synthetic cohort (pyramidal slides, labels.csv, cohort.json)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from lrmil.cli._common import known_errors
from lrmil.cli.main import app


def parse_size(text: str) -> tuple[int, int]:
    """'WxH' or 'N' (square) -> (width, height)."""
    from lrmil.errors import ConfigError

    parts = text.lower().split("x")
    try:
        values = [int(p) for p in parts]
    except ValueError:
        values = []
    if len(values) not in (1, 2) or min(values) <= 0:
        raise ConfigError(f"--size must be WxH or N in pixels (e.g. 4096x3072), got {text!r}")
    return (values[0], values[-1])


def check_range(option: str, pair: tuple[float, float], low: float) -> None:
    """A (min, max) option: low <= min <= max."""
    from lrmil.errors import ConfigError

    if pair[0] < low or pair[1] < pair[0]:
        raise ConfigError(f"{option} must be MIN MAX with {low:g} <= MIN <= MAX, got "
                          f"{' '.join(f'{v:g}' for v in pair)}")


@app.command()
def synth(
    out: Annotated[Path, typer.Argument(help="Cohort folder: slides/, labels.csv, cohort.json.")],
    slides: Annotated[int, typer.Option(help="Number of slides.")] = 20,
    seed: Annotated[int, typer.Option(help="Cohort seed (same seed, same files).")] = 0,
    size: Annotated[str, typer.Option(help="Level-0 size WxH (or N for square), px.")] = "4096",
    mpp: Annotated[float, typer.Option(help="Level-0 microns per pixel (0.5 = 20x).")] = 0.5,
    positive_fraction: Annotated[
        float, typer.Option(help="Fraction of patients whose slides are positive.")
    ] = 0.5,
    foci: Annotated[
        tuple[int, int],
        typer.Option(help="Tumour foci per positive slide (min max, per 4096^2 px)."),
    ] = (2, 4),
    focus_radius: Annotated[
        tuple[float, float],
        typer.Option(help="Radius of the foci and of their look-alike clusters (min max, 20x px)."),
    ] = (45.0, 90.0),
    lymph: Annotated[
        tuple[int, int],
        typer.Option(help="Lymphocyte clusters per slide, both classes (min max, per 4096^2 px)."),
    ] = (3, 6),
    nests: Annotated[
        tuple[int, int],
        typer.Option(help="Benign epithelial nests per slide, both classes (min max, per 4096^2)."),
    ] = (2, 4),
    lr_cue: Annotated[
        float, typer.Option(help="0..1, strength of the foci's faint low-power cue.")
    ] = 1.0,
    workers: Annotated[
        int,
        typer.Option(help="Slides rendered in parallel processes; workers beyond the number of "
                     "slides render each slide's blocks as threads (same bytes)."),
    ] = 1,
) -> None:
    """Write a synthetic H&E-like cohort whose class signal (foci of enlarged, irregular,
    hyperchromatic nuclei) is clear at 20x and faint at 5x, with look-alike confounders on every
    slide. Slides open in OpenSlide with levels, mpp and objective power."""
    with known_errors():
        import time

        from rich.console import Console
        from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

        from lrmil.errors import ConfigError
        from lrmil.synth import SynthConfig, make_cohort

        width, height = parse_size(size)
        check_range("--foci", foci, 1)
        check_range("--focus-radius", focus_radius, 4)
        check_range("--lymph", lymph, 0)
        check_range("--nests", nests, 0)
        if not 0 <= lr_cue <= 1:
            raise ConfigError(f"--lr-cue must be in [0, 1], got {lr_cue}")
        config = SynthConfig(foci=foci, focus_radius=focus_radius, cluster_radius=focus_radius,
                             lymph_clusters=lymph, nests=nests, lr_cue=lr_cue)
        console = Console(stderr=True)
        start = time.perf_counter()
        with Progress(
            TextColumn("synth"),
            BarColumn(),
            TextColumn("{task.completed}/{task.total} slides"),
            TimeRemainingColumn(),
            console=console,
        ) as progress:
            task = progress.add_task("slides", total=slides)
            specs = make_cohort(
                out,
                slides,
                seed,
                width,
                height,
                positive_fraction,
                mpp=mpp,
                config=config,
                workers=workers,
                progress=lambda _name: progress.advance(task),
            )
        positive = sum(s.label == "positive" for s in specs)
        console.print(
            f"{len(specs)} slides ({positive} positive, {len({s.patient for s in specs})} "
            f"patients) in {time.perf_counter() - start:.1f} s -> {out}/slides, labels.csv"
        )
