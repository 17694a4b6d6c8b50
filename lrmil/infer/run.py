"""`lrmil infer`: LR-only inference over many slides, with resume and per-slide error isolation.

OUT/attention/<slide>.h5 and OUT/heatmaps/<slide>.png per slide; OUT/predictions.csv,
OUT/timings.csv, OUT/summary.json (and OUT/errors.csv when a slide failed) for the slides of
this call, rebuilt from the per-slide records so skipped slides are listed too.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from lrmil.errors import ConfigError
from lrmil.infer import outputs
from lrmil.infer.engines.base import Engine
from lrmil.infer.heatmap import render_heatmap
from lrmil.infer.pipeline import predict_slide, tiling_for
from lrmil.tiling.inputs import collect_slides
from lrmil.utils.atomic import atomic_path, atomic_write_text
from lrmil.utils.progress import SlideProgress
from lrmil.wsi import MppOverride, override_for, slide_name


@dataclass
class InferSummary:
    out_dir: str
    engine: str
    done: int = 0
    skipped: int = 0
    failed: int = 0
    patches: int = 0
    seconds: float = 0.0  # wall time of this call
    mean_timings: dict[str, float] = field(default_factory=dict)  # per processed slide
    errors: list[tuple[str, str]] = field(default_factory=list)


def infer_slides(slides: Sequence[str | Path], engine: Engine, out_dir: str | Path, *,
                 mpp: MppOverride = None, batch_size: int = 64, workers: int = 2,
                 overwrite: bool = False, thumbnail_side: int = 1024, top_k: int = 5,
                 progress: bool = False) -> InferSummary:
    """Predict every slide with `engine` (slides: files, folders, glob patterns or CSVs with a
    `slide` column); see the module docstring for the outputs."""
    from lrmil.info import versions

    slides = collect_slides(slides)  # folders, globs, CSVs; refuses two slides of one name
    if batch_size < 1 or workers < 0:
        raise ConfigError(
            f"--batch-size must be >= 1 and --workers >= 0, got {batch_size}, {workers}"
        )
    out = Path(out_dir)
    (out / "attention").mkdir(parents=True, exist_ok=True)
    (out / "heatmaps").mkdir(exist_ok=True)
    meta = engine.meta
    tiling = tiling_for(meta.extra, meta.patch_size, meta.magnification)
    model_id = meta.source_sha256 or ""
    summary = InferSummary(str(out), engine.name)
    records: list[outputs.SlideRecord] = []
    processed: list[dict[str, float]] = []
    started = time.perf_counter()

    with SlideProgress(progress, len(slides), "infer") as bar:
        for path in slides:
            name = slide_name(path)
            record_path = out / "attention" / f"{name}.h5"
            try:
                identity = outputs.slide_identity(path) if path.is_file() else None
                if identity is None:
                    raise FileNotFoundError(f"{path}: slide file not found")
                if not overwrite and outputs.is_current(record_path, identity, model_id):
                    summary.skipped += 1
                else:
                    pred = predict_slide(path, engine, tiling, mpp=override_for(path, mpp),
                                         batch_size=batch_size, workers=workers,
                                         thumbnail_side=thumbnail_side, on_patches=bar.patches)
                    clock = time.perf_counter()
                    image = render_heatmap(pred.thumbnail, pred.coords, pred.patch_size0,
                                           pred.thumbnail_scale, pred.attention, top_k)
                    with atomic_path(out / "heatmaps" / f"{name}.png") as tmp:
                        image.save(tmp, format="PNG", compress_level=3)  # faster than the default 6
                    pred.timings["heatmap"] = time.perf_counter() - clock
                    outputs.write_attention(record_path, pred, meta.class_names, identity,
                                            model_id, engine.name, versions())
                    summary.done += 1
                    processed.append(pred.timings)
                records.append(outputs.read_record(record_path))
                summary.patches += records[-1].n_patches
            except Exception as exc:  # one bad slide must not stop the others
                summary.failed += 1
                summary.errors.append((name, _message(exc)))
            bar.slide_done()

    outputs.write_predictions(out / "predictions.csv", records, meta.class_names)
    outputs.write_timings(out / "timings.csv", records)
    outputs.write_errors(out / "errors.csv", summary.errors)
    summary.seconds = time.perf_counter() - started
    if processed:
        summary.mean_timings = {k: sum(t.get(k, 0.0) for t in processed) / len(processed)
                                for k in outputs.TIMING_KEYS}
    atomic_write_text(out / "summary.json", json.dumps(asdict(summary), indent=2))
    return summary


def _message(exc: Exception) -> str:
    from lrmil.errors import LrmilError

    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text if isinstance(exc, (LrmilError, OSError)) else f"{type(exc).__name__}: {text}"
