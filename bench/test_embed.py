"""Embedding benchmarks (performance.md, Pipeline: "patches/s for a given encoder with N
DataLoader workers vs 0 workers").

Run: `.venv/bin/python -m pytest bench/test_embed.py -p no:cacheprovider
      --benchmark-json=bench/results/embed.json`
A synthetic cohort (4 slides, 4096 x 4096 at 20x) is generated once into $LRMIL_BENCH_DIR
(default /tmp/lrmil_bench) and tiled at 256 px; the summary goes to bench/results/embed.md.
Correctness (workers do not change the features) is asserted before timing.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path

import numpy as np
import pytest
import torch

from lrmil.data import PatchDataset
from lrmil.embed import encode_dataset
from lrmil.encoders import build
from lrmil.tiling import TilingConfig, read_coords, tile_slides

CACHE = Path(os.environ.get("LRMIL_BENCH_DIR", "/tmp/lrmil_bench")) / "embed_cohort"
N_PATCHES = 64  # patches per timed round
RESULTS = Path(__file__).parent / "results" / "embed.md"
rows: dict[str, str] = {}


@pytest.fixture(scope="module")
def tiled() -> Path:
    from lrmil.synth import make_cohort

    if not (CACHE / "labels.csv").exists():
        make_cohort(CACHE, n_slides=4, seed=0, width=4096, height=4096, workers=2)
    out = CACHE / "tiled"
    summary = tile_slides([CACHE / "slides"], out, TilingConfig())
    assert summary.failed == 0
    return out


@pytest.fixture(scope="module", autouse=True)
def write_summary():
    yield
    if not rows:
        return
    lines = [
        "# Embedding benchmark (synthetic cohort, 4 slides 4096 x 4096 at 20x, 256 px patches)",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, torch "
        f"{torch.__version__}, {torch.get_num_threads()} threads; shared machine, noisy.",
        "",
        "| measurement | result |",
        "|---|---|",
    ]
    lines += [f"| {label} | {value} |" for label, value in rows.items()]
    RESULTS.write_text("\n".join(lines) + "\n")


def _dataset(tiled: Path, mag: str) -> PatchDataset:
    """The first N_PATCHES patches at `mag` over the cohort's first slide(s)."""
    coords_file = sorted((tiled / "coords").glob("*.h5"))[0]
    ts = read_coords(coords_file)
    if mag == "lr":
        coords, size0 = ts.coords, ts.lr_patch_size_level0
    else:
        coords, size0 = ts.hr_coords[ts.hr_valid], ts.hr_patch_size_level0
    coords = np.resize(coords, (N_PATCHES, 2))
    return PatchDataset(ts.slide_path, coords, size0, ts.patch_size, mpp=ts.level0_mpp)


def test_hr_lr_patch_ratio(tiled):
    n_lr = n_hr = 0
    for path in sorted((tiled / "coords").glob("*.h5")):
        ts = read_coords(path)
        n_lr += len(ts)
        n_hr += int(ts.hr_valid.sum())
    assert n_lr > 0 and n_lr < n_hr <= 16 * n_lr
    rows["HR / LR patches to encode (valid children / LR patches)"] = (
        f"{n_hr} / {n_lr} = {n_hr / n_lr:.1f}x (r^2 = 16 at most)"
    )


@pytest.mark.benchmark(group="embed: read + encode 64 patches, 0 workers")
@pytest.mark.parametrize("mag", ["lr", "hr"])
@pytest.mark.parametrize("name", ["lrmil-cnn", "lrmil-vit-tiny", "read only"])
def test_patches_per_second(benchmark, tiled, name, mag):
    dataset = _dataset(tiled, mag)
    if name == "read only":

        def run():
            return [dataset[i] for i in range(len(dataset))]

    else:
        encoder = build(name)

        def run():
            return encode_dataset(dataset, encoder, batch_size=32)

    run()
    benchmark.pedantic(run, rounds=3)
    rate = N_PATCHES / benchmark.stats.stats.mean
    rows[f"{name}, {mag.upper()} 256 px, 0 workers"] = f"{rate:,.0f} patches/s"


@pytest.mark.benchmark(group="embed: lrmil-cnn LR, workers")
@pytest.mark.parametrize("workers", [0, 2])
def test_workers(benchmark, tiled, workers):
    dataset = _dataset(tiled, "lr")
    encoder = build("lrmil-cnn")
    reference, _ = encode_dataset(dataset, encoder, batch_size=16)
    features, _ = encode_dataset(dataset, encoder, batch_size=16, workers=workers)
    assert np.array_equal(features, reference)
    benchmark.pedantic(
        encode_dataset,
        args=(dataset, encoder),
        kwargs={"batch_size": 16, "workers": workers},
        rounds=3,
    )
    rate = N_PATCHES / benchmark.stats.stats.mean
    rows[f"lrmil-cnn, LR 256 px, {workers} workers"] = f"{rate:,.0f} patches/s"
