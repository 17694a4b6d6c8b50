"""One synthetic slide: scene -> rendered blocks -> pyramidal TIFF."""

from __future__ import annotations

import os
from pathlib import Path

from lrmil.errors import ConfigError
from lrmil.synth.render import renderer
from lrmil.synth.scene import Scene, SynthConfig, make_scene
from lrmil.synth.tiff import TILE, write_pyramid
from lrmil.utils.atomic import atomic_path

LABELS = ("negative", "positive")
MIN_SIDE = 256


def write_slide(
    path: str | os.PathLike[str],
    width: int,
    height: int,
    *,
    seed: int = 0,
    label: str = "negative",
    mpp: float = 0.5,
    config: SynthConfig | None = None,
    block: int = 512,
    quality: int = 90,
    threads: int = 1,
) -> Scene:
    """Render a `width` x `height` (level 0) H&E-like slide to an Aperio-style pyramidal TIFF at
    `path` (same seed, same file). Level 0 is at `10 / mpp` x magnification. The file is written
    under a temporary name and renamed when complete. Returns the scene (its regions say where
    the foci and the confounders are)."""
    if label not in LABELS:
        raise ConfigError(f"label must be one of {LABELS}, got {label!r}")
    if width < MIN_SIDE or height < MIN_SIDE:
        raise ConfigError(f"slide size must be at least {MIN_SIDE} px a side, got {width}x{height}")
    if not mpp > 0:
        raise ConfigError(f"mpp must be positive, got {mpp}")
    if block <= 0 or block % TILE:
        raise ConfigError(f"block must be a positive multiple of {TILE} px, got {block}")
    if not 1 <= quality <= 100:
        raise ConfigError(f"JPEG quality must be in 1..100, got {quality}")
    path = Path(path)
    scene = make_scene(seed, width, height, label, config)
    with atomic_path(path) as partial:
        write_pyramid(
            partial,
            width,
            height,
            renderer(scene),
            mpp=mpp,
            band=block,
            quality=quality,
            threads=threads,
        )
    return scene
