"""`tile_slides`: many slides through the slide runner (worker processes, claims, torchrun
ranks or shards), resumable, one bad slide never stopping the others. Torch is never imported
on this path (it would dominate the run time) unless torchrun asks for a process group."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from lrmil.errors import ConfigError, LrmilError
from lrmil.runner import (
    Done,
    Existing,
    FileIdentity,
    RunSummary,
    SlideItem,
    check_out_dir,
    run_slides,
    slide_items,
)
from lrmil.runner.distributed import Ranks
from lrmil.tiling.config import TilingConfig
from lrmil.tiling.inputs import collect_slides
from lrmil.utils.atomic import atomic_path
from lrmil.utils.progress import SlideProgress
from lrmil.wsi import MppOverride, override_for, slide_name

COORDS_DIR, THUMBNAILS_DIR = "coords", "thumbnails"
NO_TISSUE = "no tissue (empty grid)"


def output_paths(out_dir: Path, name: str) -> tuple[Path, Path]:
    return out_dir / COORDS_DIR / f"{name}.h5", out_dir / THUMBNAILS_DIR / f"{name}.png"


@dataclass(frozen=True)
class TileJob:
    """Tiling one slide into OUT/coords/<slide>.h5 and OUT/thumbnails/<slide>.png (pickled
    into the worker processes)."""

    out_dir: Path
    config: TilingConfig
    mpp: MppOverride
    lr_grid: Path | None = None  # a folder of CLAM/TRIDENT coords files giving the LR grids

    def existing(self, item: SlideItem) -> Existing:
        """Complete when both outputs exist and the coords file was made from this very slide
        file with these settings (and the same mpp override, if any)."""
        import h5py

        coords, thumb = output_paths(self.out_dir, item.name)
        if not coords.is_file():
            return Existing()
        try:
            with h5py.File(coords, "r") as f:
                attrs = dict(f.attrs)
        except OSError:
            return Existing()  # unreadable: redone
        recorded = FileIdentity.recorded(attrs)
        if recorded is None:
            return Existing()
        try:
            current = (
                thumb.is_file()
                and FileIdentity.of(item.path).matches(recorded)
                and json.loads(attrs["tiling_config"]) == json.loads(
                    json.dumps(self.config.to_dict()))
                and _same_mpp(float(attrs["mpp_user"]), override_for(item.path, self.mpp))
                and self._same_grid(attrs, item.name)
            )
        except (OSError, KeyError, ValueError):
            current = False
        return Existing(str(coords), recorded.path, current)

    def _same_grid(self, attrs: dict[str, object], name: str) -> bool:
        """Made from the same LR grid: lrmil's own (files from before the attr included), or
        this very CLAM/TRIDENT file, unchanged."""
        from lrmil.tiling.foreign import find_grid_file

        if self.lr_grid is None:
            return attrs.get("lr_grid", "lrmil") == "lrmil"
        try:
            current = FileIdentity.of(find_grid_file(self.lr_grid, name))
        except LrmilError:
            return False  # the work reports it
        return current.matches(FileIdentity.recorded(attrs, "lr_grid"))

    def work(self, item: SlideItem, bar: SlideProgress) -> Done:
        """Tile one slide and write its thumbnail then its coords file (the completion mark)."""
        from lrmil.tiling.coords_io import write_coords
        from lrmil.tiling.foreign import GivenGrid, find_grid_file
        from lrmil.tiling.thumbnail import draw_thumbnail
        from lrmil.tiling.tiler import tile_slide
        from lrmil.wsi import open_slide

        mpp = override_for(item.path, self.mpp)
        given = (None if self.lr_grid is None
                 else GivenGrid.read(find_grid_file(self.lr_grid, item.name)))
        with open_slide(item.path, mpp=mpp) as opened:
            tiles = tile_slide(opened, self.config, given=given)
            mpp_used, dimensions = opened.mpp, opened.dimensions
        coords_path, thumb_path = output_paths(self.out_dir, item.name)
        image = draw_thumbnail(
            tiles.thumbnail, tiles.mask, tiles.coords, tiles.geometry.lr_size0, tiles.mask_scale
        )
        with atomic_path(thumb_path) as tmp:
            image.save(tmp, format="PNG", compress_level=1)  # 2x faster than the default
        write_coords(
            coords_path,
            tiles,
            name=item.name,
            slide_path=item.path,
            slide_mpp=mpp_used,
            mpp_user=mpp,
            slide_dimensions=dimensions,
            config=self.config,
            given=given,
        )
        n = len(tiles.coords)
        bar.patches(n)
        return Done(n, "" if n else NO_TISSUE)


def _same_mpp(stored: float, mpp: float | None) -> bool:
    return math.isnan(stored) if mpp is None else stored == mpp


def tile_slides(
    slides: Sequence[str | os.PathLike[str]],
    out_dir: str | os.PathLike[str],
    config: TilingConfig | None = None,
    *,
    workers: int = 1,
    overwrite: bool = False,
    mpp: MppOverride = None,
    recursive: bool = False,
    shard: str | None = None,
    progress: bool = False,
    lr_grid: str | os.PathLike[str] | None = None,
) -> RunSummary:
    """Tile slides (files, folders, globs, or CSVs with a `slide` column; `recursive`: the
    slides in subfolders too) into OUT/coords/<slide>.h5 and OUT/thumbnails/<slide>.png.

    Slides whose outputs are complete and match the slide file and the settings are skipped
    unless `overwrite`. `mpp` overrides the slides' metadata: one value, or a mapping slide
    name -> mpp (see `lrmil.wsi.load_mpp_csv`). A slide with no tissue is ok with 0 patches
    and the note NO_TISSUE. `lr_grid`: a folder of CLAM/TRIDENT coords files, one per slide
    (`<slide>.h5` or `<slide>_patches.h5`), whose positions are the LR grid where they match
    (see `lrmil.tiling.foreign`); a slide whose file is missing or does not match fails.
    See `lrmil.runner.run_slides` for claims, ranks and the records."""
    config = config or TilingConfig()
    listing = collect_slides(slides, recursive=recursive, mpp=mpp)
    Ranks.from_env(shard)  # a bad --shard is refused before anything is written
    grids = None if lr_grid is None else Path(lr_grid)
    if grids is not None and not grids.is_dir():
        raise ConfigError(f"--lr-grid {grids}: no such folder (CLAM's or TRIDENT's patches/)")
    out = check_out_dir(out_dir)
    for sub in (COORDS_DIR, THUMBNAILS_DIR):
        (out / sub).mkdir(exist_ok=True)
    settings = {"tiling": config.to_dict(), "workers": workers, "overwrite": overwrite,
                "mpp": mpp if not isinstance(mpp, dict) else dict(mpp),
                "lr_grid": None if grids is None else str(grids.resolve())}
    return run_slides(
        "tile", slide_items(listing.paths, slide_name), TileJob(out, config, mpp, grids), out,
        overwrite=overwrite, workers=workers, progress=progress, settings=settings,
        shard=shard, notes=listing.notes,
    )
