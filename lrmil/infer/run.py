"""`lrmil infer`: LR-only inference over many slides through the slide runner (resume, claims,
torchrun ranks, shards, one bad slide never stopping the others).

Per slide (`InferJob.work`): OUT/heatmaps/<slide>.png, OUT/qupath/<slide>.geojson (tiles with
their attention and the slide's call on its tissue outline, for QuPath), then
OUT/attention/<slide>.h5 (written last: its presence marks the slide complete). Per call:
OUT/predictions.csv, OUT/timings.csv and OUT/summary.json over every slide of the call whose
record is current (slides done by other processes or shards included), so the process that
finishes last leaves the complete tables.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import h5py

from lrmil.errors import ConfigError
from lrmil.infer import outputs, qupath
from lrmil.infer.engines.base import Engine
from lrmil.infer.heatmap import render_heatmap
from lrmil.infer.pipeline import predict_slide, tiling_for
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
from lrmil.utils.atomic import atomic_path, atomic_write_text
from lrmil.utils.progress import SlideProgress
from lrmil.wsi import MppOverride, override_for, slide_name


@dataclass
class InferSummary(RunSummary):
    engine: str = ""
    listed: int = 0  # slides in predictions.csv (done by any process)
    mean_timings: dict[str, float] = field(default_factory=dict)  # per slide done here


@dataclass
class InferJob:
    """One slide: predict, then the heatmap, then the attention record (the completion mark)."""

    engine: Engine
    out: Path
    tiling: TilingConfig
    mpp: MppOverride
    batch_size: int
    workers: int
    thumbnail_side: int
    top_k: int
    timings: list[dict[str, float]] = field(default_factory=list)

    @property
    def model_id(self) -> str:
        return self.engine.meta.source_sha256 or ""

    def record_path(self, name: str) -> Path:
        return self.out / "attention" / f"{name}.h5"

    def existing(self, item: SlideItem) -> Existing:
        path = self.record_path(item.name)
        try:
            with h5py.File(path, "r") as f:
                attrs = dict(f.attrs)
        except OSError:  # none, or unreadable: redone
            return Existing()
        recorded = FileIdentity.recorded(attrs)
        if recorded is None:
            return Existing()
        try:
            same_slide = FileIdentity.of(item.path).matches(recorded)
        except FileNotFoundError:
            same_slide = False
        current = same_slide and attrs.get("model") == self.model_id
        return Existing(str(path), recorded.path, current)

    def work(self, item: SlideItem, bar: SlideProgress) -> Done:
        if not item.path.is_file():
            raise FileNotFoundError(f"{item.path}: slide file not found")
        identity = FileIdentity.of(item.path)
        pred = predict_slide(item.path, self.engine, self.tiling,
                             mpp=override_for(item.path, self.mpp), batch_size=self.batch_size,
                             workers=self.workers, thumbnail_side=self.thumbnail_side,
                             on_patches=bar.patches)
        clock = time.perf_counter()
        image = render_heatmap(pred.thumbnail, pred.coords, pred.patch_size0,
                               pred.thumbnail_scale, pred.attention, self.top_k)
        with atomic_path(self.out / "heatmaps" / f"{item.name}.png") as tmp:
            image.save(tmp, format="PNG", compress_level=3)  # faster than the default 6
        pred.timings["heatmap"] = time.perf_counter() - clock
        from lrmil.info import versions

        meta = self.engine.meta
        collection = qupath.slide_geojson(pred, meta.class_names, pred.called(meta.threshold),
                                          meta.threshold)
        qupath.write_geojson(self.out / "qupath" / f"{item.name}.geojson", collection)
        outputs.write_attention(self.record_path(item.name), pred, meta.class_names,
                                identity.attrs(), self.model_id, self.engine.name, versions(),
                                meta.threshold)
        self.timings.append(pred.timings)
        return Done(len(pred.coords))


def infer_slides(slides: Sequence[str | Path], engine: Engine, out_dir: str | Path, *,
                 mpp: MppOverride = None, batch_size: int = 64, workers: int = 2,
                 overwrite: bool = False, thumbnail_side: int = 1024, top_k: int = 5,
                 recursive: bool = False, shard: str | None = None,
                 progress: bool = False) -> InferSummary:
    """Predict every slide with `engine` (slides: files, folders, glob patterns or CSVs with a
    `slide` column; `recursive`: folders' subfolders too); see the module docstring for the
    outputs and `lrmil.runner.run_slides` for claims, ranks and the run records."""
    if batch_size < 1 or workers < 0:
        raise ConfigError(
            f"--batch-size must be >= 1 and --workers >= 0, got {batch_size}, {workers}"
        )
    listing = collect_slides(slides, recursive=recursive, mpp=mpp)  # refuses two of one name
    Ranks.from_env(shard)  # a bad --shard is refused before anything is written
    out = check_out_dir(out_dir)
    (out / "attention").mkdir(exist_ok=True)
    (out / "heatmaps").mkdir(exist_ok=True)
    (out / "qupath").mkdir(exist_ok=True)
    meta = engine.meta
    job = InferJob(engine, out, tiling_for(meta.extra, meta.patch_size, meta.magnification),
                   mpp, batch_size, workers, thumbnail_side, top_k)
    items = slide_items(listing.paths, slide_name)
    settings = {"engine": engine.name, "model": job.model_id, "tiling": job.tiling.to_dict(),
                "batch_size": batch_size, "workers": workers, "thumbnail_side": thumbnail_side,
                "top_k": top_k, "overwrite": overwrite,
                "mpp": mpp if not isinstance(mpp, dict) else dict(mpp)}
    run = run_slides("infer", items, job, out, overwrite=overwrite, progress=progress,
                     settings=settings, shard=shard, notes=listing.notes)
    summary = InferSummary(**vars(run), engine=engine.name)
    if job.timings:
        summary.mean_timings = {k: sum(t.get(k, 0.0) for t in job.timings) / len(job.timings)
                                for k in outputs.TIMING_KEYS}
    if summary.reports:
        summary.listed = _write_tables(out, job, items, summary)
    return summary


def _write_tables(out: Path, job: InferJob, items: list[SlideItem],
                  summary: InferSummary) -> int:
    """predictions.csv, timings.csv and summary.json over the slides of the call whose
    record is current, whoever made it."""
    records = [outputs.read_record(job.record_path(item.name)) for item in items
               if job.existing(item).current]
    outputs.write_predictions(out / "predictions.csv", records, job.engine.meta.class_names)
    outputs.write_timings(out / "timings.csv", records)
    missing = len(items) - len(records)
    if missing:
        summary.notes.append(f"predictions.csv lists {len(records)} of {len(items)} slides; "
                             f"{missing} failed or are still being done elsewhere")
    table = {k: v for k, v in asdict(summary).items() if k != "results"}  # runs/*.json has them
    table.update(listed=len(records), counts=summary.counts())
    atomic_write_text(out / "summary.json", json.dumps(table, indent=2, default=str) + "\n")
    return len(records)
