"""Tiling and slide-reading benchmarks on synthetic 20k x 20k slides (performance.md, Pipeline).

Run: `.venv/bin/python -m pytest bench/test_tiling.py -p no:cacheprovider
      --benchmark-json=bench/results/tiling.json`
Slides are generated once into $LRMIL_BENCH_DIR (default /tmp/lrmil_bench) and reused; the
ratios and absolute times go to bench/results/tiling.md. Correctness is asserted before timing.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from lrmil.tiling import TilingConfig, read_coords, tile_slide, tile_slides
from lrmil.wsi import open_slide

SIDE = int(os.environ.get("LRMIL_BENCH_SIDE", "20000"))
CACHE = Path(os.environ.get("LRMIL_BENCH_DIR", "/tmp/lrmil_bench"))
N_SLIDES = 4
RESULTS = Path(__file__).parent / "results" / "tiling.md"
rows: dict[str, tuple[float, str]] = {}  # label -> (seconds, note), written at the end
PROCESS_HELP = "process: `lrmil --help` (target <= 0.5 s)"
PROCESS_TILE = "process: `lrmil tile (1 slide)` (target <= 1.5 s)"
RATIOS = {  # label -> (numerator row, denominator row)
    "read_region / decode floor, 20x scan (target <= 1.5)": (
        "read 64 LR patches, 20x scan: Slide.read_region",
        "read 64 LR patches, 20x scan: decode floor",
    ),
    "read_region / decode floor, 40x scan (target <= 1.5)": (
        "read 64 LR patches, 40x scan: Slide.read_region",
        "read 64 LR patches, 40x scan: decode floor",
    ),
    "tile_slides time per slide, workers=2 / workers=1": (
        "tile_slides, 4 slides, workers=2, per slide",
        "tile_slides, 4 slides, workers=1, per slide",
    ),
    "`lrmil tile` (1 slide) / `lrmil --help`": (PROCESS_TILE, PROCESS_HELP),
}


@pytest.fixture(scope="module")
def slides() -> list[Path]:
    """N_SLIDES copies of one SIDE x SIDE synthetic 20x slide (copies: same decode work)."""
    from lrmil.synth import write_slide

    CACHE.mkdir(parents=True, exist_ok=True)
    source = CACHE / f"synth_{SIDE}.svs"
    if not source.exists():
        write_slide(source, SIDE, SIDE, seed=11, label="positive", threads=os.cpu_count() or 1)
    copies = []
    for i in range(N_SLIDES):
        copy = CACHE / "cohort" / f"slide_{SIDE}_{i}.svs"
        if not copy.exists():
            copy.parent.mkdir(exist_ok=True)
            shutil.copy(source, copy)
        copies.append(copy)
    return copies


@pytest.fixture(scope="module", autouse=True)
def write_summary():
    yield
    if not rows:
        return
    lines = [
        f"# Tiling benchmark ({SIDE} x {SIDE} synthetic 20x slides)",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}; shared machine (load average at the end "
        f"{os.getloadavg()[0]:.1f}), so absolute times are noisy: compare rows of one run.",
        "",
        "| measurement | seconds | note |",
        "|---|---:|---|",
    ]
    lines += [f"| {label} | {sec:.3f} | {note} |" for label, (sec, note) in rows.items()]
    lines += ["", "Ratios (same run):", ""]
    for label, (num, den) in RATIOS.items():
        if num in rows and den in rows:
            lines.append(f"- {label}: {rows[num][0] / rows[den][0]:.2f}")
    RESULTS.write_text("\n".join(lines) + "\n")


def _mean(benchmark) -> float:
    return benchmark.stats.stats.mean


@pytest.mark.benchmark(group="tiling: in-process mask + LR grid + children")
def test_tile_in_process(benchmark, slides):
    with open_slide(slides[0]) as slide:
        tiles = tile_slide(slide, TilingConfig())
        n = len(tiles.coords)
        assert n > 20 and tiles.hr_valid.any()
        assert (tiles.hr_coords >= tiles.coords[:, None]).all()
        benchmark.pedantic(tile_slide, args=(slide, TilingConfig()), rounds=5, warmup_rounds=1)
    rows["in-process tile_slide (target <= 0.3 s)"] = (
        _mean(benchmark),
        f"{n} LR patches, {n / _mean(benchmark):,.0f} patches/s",
    )


@pytest.mark.benchmark(group="tiling: 4 slides, tile_slides with outputs")
@pytest.mark.parametrize("workers", [1, 2])
def test_tile_slides_workers(benchmark, slides, tmp_path, workers):
    def run():
        return tile_slides(slides, tmp_path, workers=workers, overwrite=True)

    summary = run()
    assert summary.ok == N_SLIDES and summary.failed == 0
    first = read_coords(tmp_path / "coords" / f"{slides[0].stem}.h5")
    assert len(first) * N_SLIDES == summary.patches
    benchmark.pedantic(run, rounds=3)
    per_slide = _mean(benchmark) / N_SLIDES
    rows[f"tile_slides, {N_SLIDES} slides, workers={workers}, per slide"] = (
        per_slide,
        f"{summary.patches / _mean(benchmark):,.0f} LR patches/s",
    )


def _lrmil(*args: str) -> list[str]:
    return [str(Path(sys.executable).parent / "lrmil"), *args]


@pytest.mark.benchmark(group="tiling: whole process")
@pytest.mark.parametrize("what", ["lrmil --help", "lrmil tile (1 slide)"])
def test_whole_process(benchmark, slides, tmp_path, what):
    if what == "lrmil --help":
        command = _lrmil("--help")
    else:
        command = _lrmil("tile", str(slides[0]), "--out", str(tmp_path), "--overwrite")

    def run() -> None:
        subprocess.run(command, check=True, capture_output=True)

    run()
    benchmark.pedantic(run, rounds=5)
    rows[PROCESS_HELP if what == "lrmil --help" else PROCESS_TILE] = (_mean(benchmark), "")


def _tile_decoder(path: Path, page: int):
    """The floor: decode just the JPEG tiles covering a region of one TIFF page (no OpenSlide,
    no resizing, no assembly), from a file opened once."""
    import tifffile

    tif = tifffile.TiffFile(path)
    tiff_page = tif.pages[page]
    tw, th = tiff_page.tilewidth, tiff_page.tilelength
    cols = -(-tiff_page.imagewidth // tw)

    def decode(x0: int, y0: int, size: int) -> list[np.ndarray]:
        indices = [
            ty * cols + tx
            for ty in range(y0 // th, (y0 + size - 1) // th + 1)
            for tx in range(x0 // tw, (x0 + size - 1) // tw + 1)
        ]
        segments = tif.filehandle.read_segments(
            [tiff_page.dataoffsets[i] for i in indices],
            [tiff_page.databytecounts[i] for i in indices],
        )
        return [
            tiff_page.decode(data, i, jpegtables=tiff_page.jpegtables)[0] for data, i in segments
        ]

    return tif, decode


@pytest.fixture(scope="module")
def slide_40x() -> Path:
    """An 8192 x 8192 40x (0.25 mpp) slide: levels 40x, 10x, 2.5x like an Aperio scan, so that
    5x patches must come from the 10x level and be reduced."""
    from lrmil.synth import write_slide

    path = CACHE / "synth_8192_40x.svs"
    if not path.exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        write_slide(
            path, 8192, 8192, seed=12, label="positive", mpp=0.25, threads=os.cpu_count() or 1
        )
    return path


@pytest.mark.benchmark(group="reading: 64 LR patches at 5x")
@pytest.mark.parametrize("scan", ["20x", "40x"])
@pytest.mark.parametrize("how", ["Slide.read_region", "decode floor"])
def test_read_vs_decode_floor(benchmark, slides, slide_40x, scan, how):
    path = slides[0] if scan == "20x" else slide_40x
    with open_slide(path) as slide:
        tiled = tile_slide(slide, TilingConfig())
        coords = np.resize(tiled.coords, (64, 2))  # 64 patches (repeated if the slide has fewer)
        size0, size = tiled.geometry.lr_size0, tiled.geometry.patch_size
        level = slide.best_level(size0 / size)
        ds = round(slide.level_downsamples[level])
        assert ds == (4 if scan == "20x" else 4)  # the 5x level (20x scan) / the 10x level (40x)
        native = size0 // ds  # level pixels read per patch: 256 at 5x, 512 at 10x
        if how == "Slide.read_region":
            patch = slide.read_region(*coords[0], size0, size)
            assert patch.shape == (size, size, 3)

            def run() -> None:
                for x, y in coords:
                    slide.read_region(x, y, size0, size)

        else:
            tif, decode = _tile_decoder(slide.path, level)

            def run() -> None:
                for x, y in coords:
                    assert decode(x // ds, y // ds, native)

        run()
        benchmark.pedantic(run, rounds=3)
        if how == "decode floor":
            tif.close()
    rows[f"read 64 LR patches, {scan} scan: {how}"] = (
        _mean(benchmark),
        f"{_mean(benchmark) / 64 * 1e3:.2f} ms/patch, {native}x{native} px of level {level} each",
    )
