"""What one synthetic slide contains, drawn from its seed before any pixel is rendered: the stain,
the tissue islands, the special regions (tumour foci, lymphocyte clusters, benign nests) and the
banks of nucleus stamps. Everything else (tissue outline, stroma fibres, nuclei positions) is a
deterministic function of global pixel coordinates, evaluated block by block in render.py."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from lrmil.synth.noise import ValueNoise, interpolate

# Optical-density vectors (R, G, B): Ruifrok & Johnston's hematoxylin; an eosin between theirs
# ([0.07, 0.99, 0.11], quite magenta) and the pinker ones Macenko's method finds on real slides.
HEMATOXYLIN = np.array([0.65, 0.70, 0.29], np.float32)
EOSIN = np.array([0.12, 0.85, 0.40], np.float32)

GRAIN_TILE = 256
COARSE = 8  # px between samples of the tissue field's smooth part
REFERENCE_AREA = 4096 * 4096  # region counts in SynthConfig are per this much slide area


@dataclass(frozen=True, kw_only=True)
class SynthConfig:
    """The generator's knobs (docs/synth.md explains each). Ranges are (low, high), drawn per
    slide or per object. Sizes are level-0 pixels (20x at the default 0.5 mpp)."""

    foci: tuple[int, int] = (2, 4)  # per 4096^2 px (>= 1), in place of as many confounders
    focus_radius: tuple[float, float] = (45.0, 90.0)
    tumour_diameter: tuple[float, float] = (10.0, 14.0)  # enlarged, irregular, hyperchromatic
    lymph_clusters: tuple[int, int] = (3, 6)  # both classes, per 4096^2 px: LR look-alikes
    nests: tuple[int, int] = (2, 4)  # benign dense epithelial nests, both classes
    nest_diameter: tuple[float, float] = (8.0, 11.0)  # closer to the tumour's: harder at 5x
    cluster_radius: tuple[float, float] = (45.0, 90.0)  # = focus_radius: size tells nothing
    normal_diameter: tuple[float, float] = (5.0, 7.0)
    lr_cue: float = 1.0  # 0..1: how much pinker the foci's cytoplasm is (a faint 5x cue)
    stain_jitter: float = 0.05  # per-slide perturbation of the stain vectors
    islands: tuple[int, int] = (1, 4)


@dataclass(frozen=True)
class Region:
    """A disc of special tissue (outline warped by noise), in level-0 px."""

    kind: str  # "focus" | "lymph" | "nest"
    x: float
    y: float
    radius: float
    eosin: float  # eosin factor inside (cytoplasm between the nuclei)
    density: float  # nucleus acceptance probability inside


@dataclass(frozen=True)
class Population:
    """A kind of nucleus: placed on a jittered lattice of `spacing` px, drawn from `stamps`
    (K, S, S) of hematoxylin concentration."""

    name: str
    spacing: float
    stamps: np.ndarray


@dataclass
class Scene:
    seed: int
    width: int
    height: int
    label: str
    config: SynthConfig
    h_vector: np.ndarray
    e_vector: np.ndarray
    h_scale: float
    e_scale: float
    background: float
    islands: np.ndarray  # (n, 5): cx, cy, a, b, angle
    regions: list[Region]
    populations: dict[str, Population]
    noise: dict[str, ValueNoise] = field(default_factory=dict)
    grain: np.ndarray = field(default_factory=lambda: np.zeros((1, 1), np.float32))

    def tissue(self, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
        """Tissue fraction in [0, 1] on the grid ys x xs: island ellipses warped by noise, with
        small lumens/fat holes. The smooth parts are sampled every COARSE px and interpolated
        (a tenth of the work), the ragged edge is added at full resolution."""

        def on_lattice(field: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> np.ndarray:
            return interpolate(
                lambda jy, jx: field(jx[0] * COARSE, jy[:, 0] * COARSE), xs, ys, COARSE, False
            )

        body = on_lattice(self._body) + 0.04 * self.noise["ragged"].grid(xs, ys)
        tissue = np.clip(body * 30 + 0.5, 0, 1)
        holes = np.clip((on_lattice(self.noise["holes"].grid) - 0.62) * 12, 0, 1)
        return tissue * (1 - holes)

    def _body(self, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
        """The smooth tissue field: the highest island ellipse plus two octaves of noise."""
        x = np.asarray(xs, np.float32)[None, :]
        y = np.asarray(ys, np.float32)[:, None]
        body = np.full((y.shape[0], x.shape[1]), -1.0, np.float32)
        reach = 1.3 * self.islands[:, 2:4].max(axis=1)  # beyond, noise cannot lift the field
        for (cx, cy, a, b, angle), far in zip(self.islands.tolist(), reach.tolist(), strict=True):
            dx = max(float(x.min()) - cx, cx - float(x.max()), 0.0)
            dy = max(float(y.min()) - cy, cy - float(y.max()), 0.0)
            if dx * dx + dy * dy > far * far:
                continue
            c, s = math.cos(angle), math.sin(angle)  # python floats keep the arrays float32
            u = ((x - cx) * c + (y - cy) * s) / a
            v = ((y - cy) * c - (x - cx) * s) / b
            np.maximum(body, 1 - u * u - v * v, out=body)
        body += 0.45 * self.noise["coarse"].grid(xs, ys)
        body += 0.15 * self.noise["edge"].grid(xs, ys)
        return body


@dataclass(frozen=True)
class NucleusKind:
    """How a kind of nucleus looks: ranges drawn per stamp."""

    diameter: tuple[float, float]  # px at level 0
    elongation: tuple[float, float]  # long / short axis
    irregularity: float  # amplitude of the outline's low harmonics
    darkness: tuple[float, float]  # hematoxylin concentration
    chromatin: float  # relative amplitude of the chromatin texture
    clump: float  # its grain (Gaussian sigma, px): larger = coarser clumps


# Lymphocytes (both classes): small, round, dense, uniformly dark.
LYMPHOCYTE = NucleusKind((4.5, 6.0), (1.0, 1.15), 0.02, (1.15, 1.4), 0.06, 0.6)
SPINDLE = NucleusKind((4.5, 6.0), (3.0, 4.5), 0.03, (0.7, 0.95), 0.1, 0.7)  # stromal


def normal_kind(config: SynthConfig) -> NucleusKind:
    """Epithelial nuclei of normal tissue: small, round, fine chromatin."""
    return NucleusKind(config.normal_diameter, (1.0, 1.5), 0.04, (0.7, 1.0), 0.12, 0.7)


def nest_kind(config: SynthConfig) -> NucleusKind:
    """Benign nests (both classes): regular round nuclei, paler, fine chromatin, packed tight."""
    return NucleusKind(config.nest_diameter, (1.0, 1.25), 0.03, (0.95, 1.15), 0.1, 0.7)


def tumour_kind(config: SynthConfig) -> NucleusKind:
    """Foci (positive slides): enlarged, irregular, hyperchromatic, coarse clumped chromatin."""
    return NucleusKind(config.tumour_diameter, (1.0, 1.6), 0.22, (1.25, 1.55), 0.4, 1.4)


def _stamp_bank(rng: np.random.Generator, count: int, kind: NucleusKind) -> np.ndarray:
    """`count` nucleus stamps (count, S, S): hematoxylin concentration of an ellipse whose
    radius is modulated by low harmonics (irregular outline), with a ~1 px soft edge, a darker
    rim and chromatin texture (smoothed noise)."""
    long_axis = kind.diameter[1] * kind.elongation[1] ** 0.5
    size = int(np.ceil(long_axis * 1.35)) | 1  # room for the irregular outline
    half = size // 2
    yy, xx = np.mgrid[-half : half + 1, -half : half + 1].astype(np.float32)
    theta = np.arctan2(yy, xx)
    bank = np.empty((count, size, size), np.float32)
    for i in range(count):
        r = rng.uniform(*kind.diameter) / 2
        e = np.sqrt(rng.uniform(*kind.elongation))
        angle = rng.uniform(0, np.pi)
        c, s = np.cos(angle), np.sin(angle)
        u, v = (xx * c + yy * s) / e, (yy * c - xx * s) * e
        outline = 1.0 + sum(
            kind.irregularity / k * rng.normal() * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
            for k in (2, 3, 4, 5)
        )
        d = np.sqrt(u * u + v * v) / (r * np.clip(outline, 0.6, 1.5))
        inside = np.clip((1 - d) * r * 1.5 + 0.5, 0, 1)
        rim = 0.25 * np.exp(-(((d - 0.9) / 0.12) ** 2))
        texture = ndimage.gaussian_filter(rng.normal(0, 1, (size, size)), kind.clump)
        texture /= texture.std() + 1e-6
        dark = rng.uniform(*kind.darkness)
        bank[i] = inside * dark * np.clip(1 + kind.chromatin * texture + rim, 0.2, None)
    return bank


# Lattice spacing (px) of each population: with the kinds above, the nests' and the
# lymphocyte clusters' mean hematoxylin at 5x matches the foci's (tests/synth/test_signal.py).
SPACING = {"normal": 12.0, "stroma": 18.0, "lymph": 6.0, "nest": 10.5, "tumour": 15.0}


def _populations(rng: np.random.Generator, config: SynthConfig) -> dict[str, Population]:
    return {
        "normal": Population(
            "normal", SPACING["normal"], _stamp_bank(rng, 24, normal_kind(config))
        ),
        "stroma": Population("stroma", SPACING["stroma"], _stamp_bank(rng, 24, SPINDLE)),
        "lymph": Population("lymph", SPACING["lymph"], _stamp_bank(rng, 24, LYMPHOCYTE)),
        "nest": Population("nest", SPACING["nest"], _stamp_bank(rng, 24, nest_kind(config))),
        "tumour": Population(
            "tumour", SPACING["tumour"], _stamp_bank(rng, 48, tumour_kind(config))
        ),
    }


def _unit(vector: np.ndarray) -> np.ndarray:
    return (vector / np.linalg.norm(vector)).astype(np.float32)


def _count(rng: np.random.Generator, span: tuple[int, int], area_scale: float) -> int:
    return int(round(rng.integers(span[0], span[1] + 1) * area_scale))


def _regions(rng: np.random.Generator, scene: Scene, positive: bool) -> list[Region]:
    """Lymphocyte clusters and benign nests on every slide; on a positive slide tumour foci take
    the place of some of them, so the number and size of dense regions say nothing about the
    class, only what is inside them. Regions lie inside tissue and apart from each other."""
    config = scene.config
    step = 16
    xs, ys = np.arange(step // 2, scene.width, step), np.arange(step // 2, scene.height, step)
    inside = np.argwhere(scene.tissue(xs, ys) > 0.99)
    area_scale = scene.width * scene.height / REFERENCE_AREA
    cue = config.lr_cue
    n_lymph = _count(rng, config.lymph_clusters, area_scale)
    n_nest = _count(rng, config.nests, area_scale)
    kinds = ["lymph"] * max(n_lymph, n_lymph + n_nest == 0) + ["nest"] * n_nest
    if positive:
        n_foci = min(max(1, _count(rng, config.foci, area_scale)), len(kinds))
        replaced = set(rng.choice(len(kinds), n_foci, replace=False).tolist())
        kinds = ["focus"] * n_foci + [k for i, k in enumerate(kinds) if i not in replaced]
    regions: list[Region] = []
    for kind in kinds:
        span = config.focus_radius if kind == "focus" else config.cluster_radius
        for _attempt in range(50):
            if len(inside) == 0:
                break
            iy, ix = inside[rng.integers(len(inside))]
            x, y = xs[ix] + rng.uniform(-step / 2, step / 2), ys[iy] + rng.uniform(-8, 8)
            radius = rng.uniform(*span)
            if all(np.hypot(x - o.x, y - o.y) > radius + o.radius + 24 for o in regions):
                eosin = {"focus": 0.75 + 0.1 * cue, "lymph": 0.6, "nest": 0.8}[kind]
                regions.append(
                    Region(
                        kind,
                        x,
                        y,
                        radius,
                        eosin * rng.uniform(0.85, 1.15),
                        rng.uniform(0.8, 0.95),
                    )
                )
                break
    return regions


def make_scene(
    seed: int, width: int, height: int, label: str, config: SynthConfig | None = None
) -> Scene:
    """Draw everything a slide contains from `seed` (same seed, same scene)."""
    config = config or SynthConfig()
    rng = np.random.default_rng(seed)
    jitter = config.stain_jitter
    side = min(width, height)
    n_islands = int(rng.integers(config.islands[0], config.islands[1] + 1))
    islands = np.stack(
        [
            rng.uniform(0.25, 0.75, n_islands) * width,
            rng.uniform(0.25, 0.75, n_islands) * height,
            rng.uniform(0.18, 0.38, n_islands) * side,
            rng.uniform(0.15, 0.3, n_islands) * side,
            rng.uniform(0, np.pi, n_islands),
        ],
        axis=1,
    )
    noise_seeds = rng.integers(0, 2**62, 6)
    scene = Scene(
        seed=seed,
        width=width,
        height=height,
        label=label,
        config=config,
        h_vector=_unit(HEMATOXYLIN + rng.normal(0, jitter, 3)),
        e_vector=_unit(EOSIN + rng.normal(0, jitter, 3)),
        h_scale=float(rng.uniform(0.85, 1.15)),
        e_scale=float(rng.uniform(0.75, 1.2)),
        background=float(rng.uniform(236, 250)),
        islands=islands,
        regions=[],
        populations=_populations(rng, config),
        noise={
            "coarse": ValueNoise(int(noise_seeds[0]), max(side / 6, 64)),
            "edge": ValueNoise(int(noise_seeds[1]), 70),
            "ragged": ValueNoise(int(noise_seeds[2]), 12),
            "holes": ValueNoise(int(noise_seeds[3]), 45),
            "fibre": ValueNoise(int(noise_seeds[4]), 220),
            "density": ValueNoise(int(noise_seeds[5]), 150),
        },
    )
    # Sensor noise, tiled over the slide by global coordinates (so boxes agree at seams).
    scene.grain = rng.standard_normal((GRAIN_TILE, GRAIN_TILE), dtype=np.float32)
    scene.regions = _regions(rng, scene, positive=label == "positive")
    return scene
