"""The class signal: clear at 20x, faint at 5x, with look-alike confounders on every slide.

Measured from the written file (tests/synth/signal_stats.py) on the cores of the special
regions: tumour foci (positive slides), lymphocyte clusters and benign nests (both classes)."""

from __future__ import annotations

import numpy as np
import openslide
import pytest
from signal_stats import RegionStats, region_stats

from lrmil.synth import Region, SynthConfig, write_slide

# Counts are per 4096^2 px: on 2560^2 this gives 3 foci in place of 3 of ~10 confounders.
CONFIG = SynthConfig(foci=(8, 8), lymph_clusters=(12, 12), nests=(12, 12))


@pytest.fixture(scope="module")
def measured(tmp_path_factory) -> dict[str, list[RegionStats]]:
    path = tmp_path_factory.mktemp("signal") / "positive.svs"
    scene = write_slide(path, 2560, 2560, seed=11, label="positive", config=CONFIG)
    # plain tissue, away from every region, as the reference for "a visible difference"
    step = 64
    grid = np.arange(step, 2560 - step, step)
    tissue = scene.tissue(grid, grid)
    plain = [
        Region("plain", float(x), float(y), 60.0, 1.0, 0.0)
        for (iy, ix) in np.argwhere(tissue > 0.999)[::7]
        for x, y in [(grid[ix], grid[iy])]
        if all(np.hypot(x - r.x, y - r.y) > r.radius + 90 for r in scene.regions)
    ][:6]
    stats: dict[str, list[RegionStats]] = {}
    with openslide.OpenSlide(path) as slide:
        for region in [*scene.regions, *plain]:
            stats.setdefault(region.kind, []).append(region_stats(slide, region))
    assert {k: len(v) >= 2 for k, v in stats.items()} == dict.fromkeys(
        ["focus", "lymph", "nest", "plain"], True
    )
    return stats


def _mean(stats: list[RegionStats], field: str) -> np.ndarray:
    return np.mean([getattr(s, field) for s in stats], axis=0)


def test_foci_nuclei_are_hyperchromatic_coarse_and_large_at_20x(measured):
    focus = measured["focus"]
    for kind in ("lymph", "nest"):
        other = measured[kind]
        assert _mean(focus, "chromatin") > 1.5 * _mean(other, "chromatin"), kind
        assert _mean(focus, "nuclear_od") > 1.1 * _mean(other, "nuclear_od"), kind
    assert _mean(focus, "large_fraction") > _mean(measured["lymph"], "large_fraction") + 0.3


def test_foci_and_confounders_look_alike_at_5x(measured):
    focus = _mean(measured["focus"], "lr_rgb")
    plain = _mean(measured["plain"], "lr_rgb")
    confounders = _mean(measured["lymph"] + measured["nest"], "lr_rgb")
    visible = np.abs(focus - plain).max()  # nuclei-dense vs plain tissue: obvious at 5x
    assert visible > 25
    assert np.abs(focus - confounders).max() < 0.35 * visible
