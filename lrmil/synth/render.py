"""Render any box of a synthetic slide's level 0 from its Scene, in the compiled core
(csrc/cpu/synth_render.cpp).

Stains are mixed in optical density and converted with Beer-Lambert: RGB = I0 * exp(-(cH * h +
cE * e)), cH and cE the hematoxylin and eosin concentration maps, h and e the slide's jittered
stain vectors. The box is rendered with a margin wide enough for every nucleus that touches it,
so neighbouring boxes agree at their seams; nuclei sit on jittered lattices whose sites are
hashed from global coordinates, so a box needs no object list beyond the scene's few regions.
The renderer releases the GIL: threads render boxes in parallel.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from lrmil._native import lib
from lrmil.synth.scene import Scene

_C = lib()  # the compiled core, or a clear "not built" error

_KINDS = ("focus", "lymph", "nest")  # region kind codes of the compiled renderer
# The compiled renderer's population order (its site hash keys on the index).
_POPULATIONS = ("normal", "stroma", "lymph", "nest", "tumour")
_NOISES = ("coarse", "edge", "ragged", "holes", "fibre", "density")

BoxRenderer = Callable[[int, int, int, int], np.ndarray]


def _margin(scene: Scene) -> int:
    return 2 * (max(p.stamps.shape[1] for p in scene.populations.values()) // 2) + 2


def compiled_scene(scene: Scene) -> _C.SynthRenderer:
    """The scene copied into the compiled core: `.render(x0, y0, width, height)` and
    `.tissue(x0, y0, width, height)` (the tissue fraction, as `Scene.tissue`)."""
    if tuple(scene.populations) != _POPULATIONS:  # the site hash keys on the order
        raise ValueError(
            f"scene populations must be {_POPULATIONS}, got {tuple(scene.populations)}"
        )
    regions = np.array(
        [(_KINDS.index(r.kind), r.x, r.y, r.radius, r.eosin, r.density) for r in scene.regions],
        np.float64,
    ).reshape(-1, 6)
    return _C.SynthRenderer(
        seed=scene.seed & 0xFFFFFFFFFFFFFFFF,
        noises=[(scene.noise[n].seed, scene.noise[n].scale) for n in _NOISES],
        islands=np.asarray(scene.islands, np.float64).reshape(-1, 5),
        regions=regions,
        spacings=[scene.populations[p].spacing for p in _POPULATIONS],
        stamps=[scene.populations[p].stamps for p in _POPULATIONS],
        h_vector=scene.h_vector,
        e_vector=scene.e_vector,
        h_scale=scene.h_scale,
        e_scale=scene.e_scale,
        glass=float(np.float32(scene.background * np.exp(-0.015))),
        grain=scene.grain,
        margin=_margin(scene),
    )


def renderer(scene: Scene) -> BoxRenderer:
    """`render(x0, y0, width, height) -> (height, width, 3) uint8` for the scene's level 0; build
    it once per slide (it copies the scene into the compiled core)."""
    return compiled_scene(scene).render


def render_box(scene: Scene, x0: int, y0: int, width: int, height: int) -> np.ndarray:
    """The level-0 RGB pixels (height, width, 3) uint8 of the box at (x0, y0)."""
    return renderer(scene)(x0, y0, width, height)
