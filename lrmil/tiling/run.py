"""`tile_slides`: many slides, in parallel worker processes, resumable, one bad slide never
stopping the others. Torch is never imported on this path (it would dominate the run time)."""

from __future__ import annotations

import csv
import io
import json
import math
import multiprocessing
import os
import signal
import tempfile
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lrmil.errors import ConfigError, LrmilError
from lrmil.tiling.config import TilingConfig
from lrmil.tiling.inputs import collect_slides
from lrmil.utils.atomic import atomic_path, atomic_write_text
from lrmil.wsi import MppOverride, override_for, slide_name

if TYPE_CHECKING:
    from rich.progress import Progress

COORDS_DIR, THUMBNAILS_DIR, ERRORS_CSV = "coords", "thumbnails", "errors.csv"


@dataclass
class SlideResult:
    slide: str
    name: str
    status: str  # "ok", "empty" (no tissue: a valid, empty grid), "skipped" or "failed"
    patches: int = 0
    seconds: float = 0.0
    error: str = ""


@dataclass
class TilingSummary:
    out_dir: Path
    results: list[SlideResult] = field(default_factory=list)
    seconds: float = 0.0

    def count(self, *statuses: str) -> int:
        return sum(r.status in statuses for r in self.results)

    @property
    def ok(self) -> int:
        """Slides tiled in this run, empty ones included."""
        return self.count("ok", "empty")

    @property
    def skipped(self) -> int:
        return self.count("skipped")

    @property
    def failed(self) -> int:
        return self.count("failed")

    @property
    def empty(self) -> list[str]:
        return [r.name for r in self.results if r.status == "empty"]

    @property
    def patches(self) -> int:
        return sum(r.patches for r in self.results if r.status in ("ok", "empty"))


def output_paths(out_dir: Path, name: str) -> tuple[Path, Path]:
    return out_dir / COORDS_DIR / f"{name}.h5", out_dir / THUMBNAILS_DIR / f"{name}.png"


def is_complete(slide: Path, out_dir: Path, config: TilingConfig, mpp: float | None) -> bool:
    """Both outputs exist and were made from this very slide file with these settings (and
    the same mpp override, if any)."""
    import h5py

    coords, thumb = output_paths(out_dir, slide_name(slide))
    if not (coords.is_file() and thumb.is_file() and slide.is_file()):
        return False
    stat = slide.stat()
    try:
        with h5py.File(coords, "r") as f:
            return (
                int(f.attrs["slide_size"]) == stat.st_size
                and float(f.attrs["slide_mtime"]) == stat.st_mtime
                and json.loads(f.attrs["tiling_config"]) == json.loads(json.dumps(config.to_dict()))
                and _same_mpp(float(f.attrs["mpp_user"]), mpp)
            )
    except (OSError, KeyError, ValueError):
        return False


def _same_mpp(stored: float, mpp: float | None) -> bool:
    return math.isnan(stored) if mpp is None else stored == mpp


def tile_one(slide: Path, out_dir: Path, config: TilingConfig, mpp: float | None) -> SlideResult:
    """Tile one slide and write its thumbnail then its coords file (the completion mark).
    Any failure becomes a failed result, so that one bad slide never stops the others."""
    from lrmil.tiling.coords_io import write_coords
    from lrmil.tiling.thumbnail import draw_thumbnail
    from lrmil.tiling.tiler import tile_slide
    from lrmil.wsi import open_slide

    start = time.perf_counter()
    name = slide_name(slide)
    try:
        with open_slide(slide, mpp=mpp) as opened:
            tiles = tile_slide(opened, config)
            mpp_used, dimensions = opened.mpp, opened.dimensions
        coords_path, thumb_path = output_paths(out_dir, name)
        image = draw_thumbnail(
            tiles.thumbnail, tiles.mask, tiles.coords, tiles.geometry.lr_size0, tiles.mask_scale
        )
        with atomic_path(thumb_path) as tmp:
            image.save(tmp, format="PNG", compress_level=1)  # 2x faster than the default
        write_coords(
            coords_path,
            tiles,
            name=name,
            slide_path=slide,
            slide_mpp=mpp_used,
            mpp_user=mpp,
            slide_dimensions=dimensions,
            config=config,
        )
    except (LrmilError, OSError) as exc:
        return SlideResult(str(slide), name, "failed", 0, time.perf_counter() - start, str(exc))
    except Exception as exc:  # a reader or library bug on an odd file: report it with its type
        message = f"{slide}: unexpected {type(exc).__name__}: {exc}"
        return SlideResult(str(slide), name, "failed", 0, time.perf_counter() - start, message)
    n = len(tiles.coords)
    status = "ok" if n else "empty"
    return SlideResult(str(slide), name, status, n, time.perf_counter() - start)


def _ignore_sigint() -> None:
    # Workers leave Ctrl-C to the parent, which lets running slides finish and cancels the rest.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _prepare_out_dir(out_dir: Path) -> None:
    try:
        for sub in (COORDS_DIR, THUMBNAILS_DIR):
            (out_dir / sub).mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out_dir / COORDS_DIR):
            pass
    except OSError as exc:
        raise ConfigError(
            f"{out_dir}: cannot write to the output folder ({exc.strerror})"
        ) from None


def _write_errors(out_dir: Path, results: list[SlideResult]) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["slide", "error"])
    writer.writerows([r.slide, r.error] for r in results if r.status == "failed")
    atomic_write_text(out_dir / ERRORS_CSV, buffer.getvalue())


class _EagerPool(ProcessPoolExecutor):
    """Starts all its workers with the first task. CPython (3.11) otherwise spawns them on
    demand inside submit(): when a worker dies meanwhile, a worker spawned after the pool broke
    is never terminated and shutdown() waits for it forever."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._safe_to_dynamically_spawn_children = False


def _pool(workers: int) -> ProcessPoolExecutor:
    return _EagerPool(
        max_workers=workers,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=_ignore_sigint,
    )


def _isolated(slide: Path, out_dir: Path, config: TilingConfig, mpp: float | None) -> SlideResult:
    """Tile one slide in a process of its own, so that a crash is pinned on that slide."""
    with _pool(1) as pool:
        try:
            return pool.submit(tile_one, slide, out_dir, config, mpp).result()
        except BrokenProcessPool:
            error = f"{slide}: the worker process died while tiling it (a native reader crash?)"
            return SlideResult(str(slide), slide_name(slide), "failed", error=error)


def _run(
    todo: list[tuple[Path, float | None]], out_dir: Path, config: TilingConfig, workers: int
) -> Iterator[SlideResult]:
    if workers <= 1 or len(todo) <= 1:
        for slide, mpp in todo:
            yield tile_one(slide, out_dir, config, mpp)
        return
    pool = _pool(min(workers, len(todo)))
    futures: dict[Future[SlideResult], int] = {}
    broken = False
    for i, (slide, mpp) in enumerate(todo):
        try:
            futures[pool.submit(tile_one, slide, out_dir, config, mpp)] = i
        except (BrokenProcessPool, OSError):  # a worker died: what is left is retried below
            broken = True  # and the slide queued last may be one the pool never fails
            break
    unfinished = set(range(len(todo)))
    try:
        for future in () if broken else as_completed(futures):
            try:
                result = future.result()
            except BrokenProcessPool:  # a worker died: every unfinished slide is retried below
                break
            unfinished.discard(futures[future])
            yield result
    finally:
        # On Ctrl-C or an error: cancel what has not started, let running slides finish.
        pool.shutdown(wait=True, cancel_futures=True)
    for future, i in futures.items():  # finished before the pool broke: keep
        if i in unfinished and future.done() and not future.cancelled() and not future.exception():
            unfinished.discard(i)
            yield future.result()
    for i in sorted(unfinished):
        slide, mpp = todo[i]
        yield _isolated(slide, out_dir, config, mpp)


def tile_slides(
    slides: Sequence[str | os.PathLike[str]],
    out_dir: str | os.PathLike[str],
    config: TilingConfig | None = None,
    *,
    workers: int = 1,
    overwrite: bool = False,
    mpp: MppOverride = None,
    progress: bool = False,
) -> TilingSummary:
    """Tile slides (files, folders, globs, or CSVs with a `slide` column) into
    OUT/coords/<slide>.h5 and OUT/thumbnails/<slide>.png, and write OUT/errors.csv.

    Slides whose outputs are complete and match the slide file (size, mtime) and the settings
    are skipped unless `overwrite`. `mpp` overrides the slides' metadata: one value, or a
    mapping slide name -> mpp (see `lrmil.wsi.load_mpp_csv`)."""
    config = config or TilingConfig()
    out = Path(out_dir)
    paths = collect_slides(slides)
    _prepare_out_dir(out)
    start = time.perf_counter()
    summary = TilingSummary(out)
    todo: list[tuple[Path, float | None]] = []
    for path in paths:
        user_mpp = override_for(path, mpp)
        if not overwrite and is_complete(path, out, config, user_mpp):
            summary.results.append(SlideResult(str(path), slide_name(path), "skipped"))
        else:
            todo.append((path, user_mpp))

    bar = _progress() if progress else None
    try:
        if bar is not None:
            bar.start()
            task = bar.add_task("tiling", total=len(paths), completed=summary.skipped, patches=0)
        for result in _run(todo, out, config, workers):
            summary.results.append(result)
            if bar is not None:
                bar.update(task, advance=1, patches=summary.patches)
    finally:
        if bar is not None:
            bar.stop()
        summary.seconds = time.perf_counter() - start
        _write_errors(out, summary.results)
    return summary


def _progress() -> Progress:
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        ProgressColumn,
        Task,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )
    from rich.text import Text

    class PatchRate(ProgressColumn):
        def render(self, task: Task) -> Text:
            patches, elapsed = task.fields["patches"], task.elapsed or 0.0
            rate = f"{patches / elapsed:,.0f}/s" if elapsed > 0 else "-/s"
            return Text(f"{patches:,} patches, {rate}")

    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("slides,"),
        PatchRate(),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=Console(stderr=True),
    )
