"""The per-slide record `attention/<slide>.h5` and the tables built from those records.

The h5 is written last for a slide (after its heatmap), atomically, so its presence marks the
slide complete; it records the inputs it came from (slide identity, model) so a re-run can tell
whether it is current (lrmil.infer.run.InferJob.existing).
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from lrmil.errors import FileFormatError
from lrmil.infer.pipeline import SlidePrediction
from lrmil.utils.atomic import atomic_path, atomic_write_text

TIMING_KEYS = ("tissue", "read", "encode", "aggregate", "heatmap", "total")


@dataclass
class SlideRecord:
    slide: str
    predicted: str
    probabilities: list[float]
    n_patches: int
    seconds: float
    timings: dict[str, float]
    threshold: float | None = None  # the decision threshold used (two classes), else argmax


def write_attention(path: Path, pred: SlidePrediction, class_names: list[str],
                    identity: dict[str, object], model_id: str, engine: str,
                    versions: dict[str, str], threshold: float | None = None) -> None:
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        f.create_dataset("attention", data=pred.attention.astype(np.float32))
        f.create_dataset("coords", data=pred.coords.astype(np.int64))
        f.create_dataset("probabilities", data=pred.probabilities.astype(np.float32))
        f.attrs.update({
            "slide": pred.name, "predicted": class_names[pred.called(threshold)],
            "threshold": json.dumps(threshold),
            "class_names": json.dumps(class_names), "patch_size_level0": pred.patch_size0,
            "model": model_id, "engine": engine, "timings": json.dumps(pred.timings),
            "versions": json.dumps(versions), **identity,
        })


def read_record(path: Path) -> SlideRecord:
    try:
        with h5py.File(path, "r") as f:
            timings = json.loads(f.attrs["timings"])
            return SlideRecord(
                slide=str(f.attrs["slide"]), predicted=str(f.attrs["predicted"]),
                probabilities=[float(p) for p in f["probabilities"][()]],
                n_patches=int(f["attention"].shape[0]), seconds=float(timings["total"]),
                timings=timings, threshold=json.loads(f.attrs.get("threshold", "null")),
            )
    except (OSError, KeyError) as exc:
        raise FileFormatError(f"{path}: not a readable lrmil attention file ({exc})") from exc


def write_predictions(path: Path, records: list[SlideRecord], class_names: list[str]) -> None:
    """slide, predicted (the class called), prob_<class> (calibrated: the export applies the
    temperature), threshold (P(second class) >= threshold calls it; "argmax": the most
    probable class), n_patches, seconds."""
    rows = [["slide", "predicted", *[f"prob_{c}" for c in class_names], "threshold",
             "n_patches", "seconds"]]
    rows += [[r.slide, r.predicted, *[f"{p:.6f}" for p in r.probabilities],
              "argmax" if r.threshold is None else f"{r.threshold:.6f}", r.n_patches,
              f"{r.seconds:.3f}"] for r in records]
    atomic_write_text(path, _csv(rows))


def write_timings(path: Path, records: list[SlideRecord]) -> None:
    rows = [["slide", "n_patches", *[f"{k}_s" for k in TIMING_KEYS], "patches_per_s"]]
    for r in records:
        rate = r.n_patches / r.seconds if r.seconds > 0 else 0.0
        rows.append([r.slide, r.n_patches, *[f"{r.timings.get(k, 0.0):.3f}" for k in TIMING_KEYS],
                     f"{rate:.1f}"])
    atomic_write_text(path, _csv(rows))


def _csv(rows: list[list[object]]) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows(rows)
    return buffer.getvalue()
