"""Render any box of a synthetic slide's level 0 from its Scene.

Stains are mixed in optical density and converted with Beer-Lambert: RGB = I0 * exp(-(cH * h +
cE * e)), cH and cE the hematoxylin and eosin concentration maps, h and e the slide's jittered
stain vectors. The box is rendered with a margin wide enough for every nucleus that touches it,
so neighbouring boxes agree at their seams; nuclei sit on jittered lattices whose sites are
hashed from global coordinates, so a box needs no object list beyond the scene's few regions.
"""

from __future__ import annotations

import numpy as np

from lrmil.synth.noise import hash_uniform
from lrmil.synth.scene import Scene

_KINDS = ("focus", "lymph", "nest")
_POPULATION_OF = {"focus": "tumour", "lymph": "lymph", "nest": "nest"}


def _margin(scene: Scene) -> int:
    return 2 * (max(p.stamps.shape[1] for p in scene.populations.values()) // 2) + 2


def _region_maps(
    scene: Scene, xs: np.ndarray, ys: np.ndarray, tissue: np.ndarray
) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """Per kind, the nucleus acceptance probability map; the union of the regions; the eosin
    factor. Regions have noise-warped outlines with a ~3 px soft edge."""
    density = {kind: np.zeros_like(tissue) for kind in _KINDS}
    union = np.zeros_like(tissue)
    eosin = np.ones_like(tissue)
    for region in scene.regions:
        reach = region.radius * 1.3 + 2
        x_lo, x_hi = np.searchsorted(xs, [region.x - reach, region.x + reach])
        y_lo, y_hi = np.searchsorted(ys, [region.y - reach, region.y + reach])
        if x_lo >= x_hi or y_lo >= y_hi:
            continue
        bx, by = xs[x_lo:x_hi], ys[y_lo:y_hi]
        d = np.hypot(bx[None, :] - region.x, by[:, None] - region.y) / region.radius
        d += 0.2 * scene.noise["edge"].grid(bx, by)
        m = np.clip((1 - d) * region.radius / 3 + 0.5, 0, 1) * tissue[y_lo:y_hi, x_lo:x_hi]
        box = (slice(y_lo, y_hi), slice(x_lo, x_hi))
        np.maximum(density[region.kind][box], m * region.density, out=density[region.kind][box])
        np.maximum(union[box], m, out=union[box])
        eosin[box] += m * (region.eosin - eosin[box])
    return density, union, eosin


def _stamp_nuclei(
    scene: Scene,
    canvas: np.ndarray,
    name: str,
    accept: np.ndarray,
    x0: int,
    y0: int,
) -> None:
    """Max-composite the nuclei of one population whose lattice site passes `accept` (a
    probability map over the canvas, whose top-left pixel is at global (x0, y0)). The canvas
    must be C-contiguous: nuclei are written through a flat view."""
    population = scene.populations[name]
    g, stamps = population.spacing, population.stamps
    height, width = canvas.shape
    size = stamps.shape[1]
    half = size // 2
    jx = np.arange(np.floor(x0 / g) - 1, np.ceil((x0 + width) / g) + 1).astype(np.int64)
    jy = np.arange(np.floor(y0 / g) - 1, np.ceil((y0 + height) / g) + 1).astype(np.int64)
    jy, jx = np.meshgrid(jy, jx, indexing="ij")
    pop_id = list(scene.populations).index(name)
    u = [hash_uniform(scene.seed, pop_id, c, jy, jx) for c in range(4)]
    cx = np.rint((jx + 0.5 + 0.8 * (u[0] - 0.5)) * g).astype(np.int64) - x0
    cy = np.rint((jy + 0.5 + 0.8 * (u[1] - 0.5)) * g).astype(np.int64) - y0
    fits = (cx >= half) & (cx < width - half) & (cy >= half) & (cy < height - half)
    cx, cy, u_accept, u_stamp = cx[fits], cy[fits], u[2][fits], u[3][fits]
    keep = u_accept < accept[cy, cx]
    if not keep.any():
        return
    cx, cy = cx[keep], cy[keep]
    which = np.minimum((u_stamp[keep] * len(stamps)).astype(np.int64), len(stamps) - 1)
    offsets = (np.arange(size)[:, None] * width + np.arange(size)[None, :]).ravel()
    index = ((cy - half) * width + (cx - half))[:, None] + offsets[None, :]
    flat = canvas.view()
    flat.shape = (-1,)  # raises instead of copying if the canvas is not contiguous
    np.maximum.at(flat, index.ravel(), stamps[which].reshape(-1))


def render_box(scene: Scene, x0: int, y0: int, width: int, height: int) -> np.ndarray:
    """The level-0 RGB pixels (height, width, 3) uint8 of the box at (x0, y0)."""
    pad = _margin(scene)
    xs = np.arange(x0 - pad, x0 + width + pad, dtype=np.float32)
    ys = np.arange(y0 - pad, y0 + height + pad, dtype=np.float32)
    tissue = scene.tissue(xs, ys)
    tile = scene.grain.shape[0]
    rows, cols = np.arange(y0, y0 + height) % tile, np.arange(x0, x0 + width) % tile
    grain = scene.grain.take(rows, axis=0).take(cols, axis=1)[..., None]
    glass = np.float32(scene.background * np.exp(-0.015))
    if not tissue.any():  # most of a slide is glass: skip the stains
        return np.clip(glass + 2 * grain, 0, 255).astype(np.uint8).repeat(3, axis=2)
    density, union, eosin_factor = _region_maps(scene, xs, ys, tissue)

    hema = np.zeros(tissue.shape, np.float32)
    cellularity = 0.3 + 0.2 * scene.noise["density"].grid(xs, ys)
    plain = tissue * (1 - union) * cellularity
    for name in ("normal", "stroma"):
        _stamp_nuclei(scene, hema, name, plain, x0 - pad, y0 - pad)
    for kind in _KINDS:
        if density[kind].any():
            _stamp_nuclei(scene, hema, _POPULATION_OF[kind], density[kind], x0 - pad, y0 - pad)

    crop = (slice(pad, pad + height), slice(pad, pad + width))
    hema, tissue = hema[crop], tissue[crop]
    union, eosin_factor = union[crop], eosin_factor[crop]
    # Stroma: wavy fibres as the level sets of a warped smooth noise field; cells fill regions.
    level = scene.noise["fibre"].grid(xs[pad:-pad], ys[pad:-pad])
    level += 0.2 * scene.noise["edge"].grid(xs[pad:-pad], ys[pad:-pad])
    fibre = np.sin(np.float32(2 * np.pi * 12) * level)
    fibre += union * (0.2 - fibre)
    eosin = tissue * eosin_factor * (0.45 + 0.15 * fibre) * (1 - 0.6 * np.minimum(hema, 1))
    hema = (hema + 0.06 * tissue) * scene.h_scale
    eosin *= scene.e_scale

    rgb = np.empty((height, width, 3), np.float32)
    for c in range(3):  # exp on contiguous planes: numpy's SIMD exp skips strided outputs
        rgb[..., c] = np.exp(-(hema * scene.h_vector[c] + eosin * scene.e_vector[c]))
    rgb *= glass
    rgb += 2 * grain
    return np.clip(rgb, 0, 255, out=rgb).astype(np.uint8)
