"""Synthetic slide generation speed and memory (`lrmil synth`).

Run: `.venv/bin/python -m pytest bench/test_synth.py -p no:cacheprovider
      --benchmark-json=bench/results/synth.json`  (LRMIL_BENCH_SIDE=20000 by default)
Writes bench/results/synth.md: seconds per slide, level-0 Mpx/s, threads 1 vs 2, file size,
and the peak of traced memory against the size of level 0 (streaming keeps it a fraction).
"""

from __future__ import annotations

import os
import platform
import tracemalloc
from pathlib import Path

import openslide
import pytest

from lrmil.synth import write_slide

SIDE = int(os.environ.get("LRMIL_BENCH_SIDE", "20000"))
RESULTS = Path(__file__).parent / "results" / "synth.md"
rows: dict[str, str] = {}


@pytest.fixture(scope="module", autouse=True)
def summary():
    yield
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    lines = [
        f"# lrmil synth: one {SIDE} x {SIDE} slide (20x, JPEG q90)",
        "",
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores "
        "(shared, noisy).",
        "",
        "| case | result |",
        "|---|---|",
        *(f"| {k} | {v} |" for k, v in rows.items()),
        "",
    ]
    RESULTS.write_text("\n".join(lines))


@pytest.mark.parametrize("threads", [1, 2])
def test_write_slide(benchmark, tmp_path, threads):
    path = tmp_path / "bench.svs"
    benchmark.group = f"synth {SIDE}"
    benchmark.pedantic(
        write_slide,
        args=(path, SIDE, SIDE),
        kwargs={"seed": 3, "label": "positive", "threads": threads},
        rounds=1,
        iterations=1,
    )
    with openslide.OpenSlide(path) as slide:  # the result is a valid pyramid
        assert slide.dimensions == (SIDE, SIDE) and slide.level_count >= 3
    seconds = benchmark.stats.stats.mean
    rows[f"threads={threads}"] = (
        f"{seconds:.1f} s, {SIDE * SIDE / 1e6 / seconds:.1f} Mpx/s, "
        f"{path.stat().st_size / 1e6:.0f} MB file"
    )


def test_memory_stays_bounded(tmp_path):
    tracemalloc.start()
    write_slide(tmp_path / "mem.svs", SIDE, SIDE, seed=3, label="positive")
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    level0, band = SIDE * SIDE * 3, 512 * SIDE * 3  # bytes of level 0, of one band of it
    rows["peak traced memory"] = (
        f"{peak / 1e6:.0f} MB ({peak / level0:.1%} of level 0, {peak / band:.1f} bands)"
    )
    assert peak < 16 * band  # a few bands in flight, never the whole level 0
