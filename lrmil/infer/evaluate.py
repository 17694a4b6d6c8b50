"""`lrmil infer --labels CSV`: held-out slides' predictions against their labels, in
OUT/evaluation.json: AUC (macro one-vs-rest for more than two classes), accuracy and balanced
accuracy of the classes called (the model's decision threshold), and ECE (15 bins) and Brier
score of the probabilities (calibrated: the export applies the temperature)."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np

from lrmil.errors import ConfigError, FileFormatError
from lrmil.utils.atomic import atomic_write_text


def read_held_out_labels(path: Path, class_names: list[str],
                         slides: list[str] | None = None) -> dict[str, int]:
    """{slide: class index} from a `slide,label[,patient]` CSV, refusing a label the model
    does not know, and a CSV that labels none of `slides` (the names of the slides given), before
    anything is inferred. A slide with an empty label is unlabelled: left out."""
    from lrmil.distill.cohort import read_labels

    labels, _ = read_labels(path)
    labels = {slide: label for slide, label in labels.items() if label}
    if not labels:
        raise ConfigError(f"labels CSV {path} has no labelled slide (every label is empty)")
    unknown = sorted({label for label in labels.values() if label not in class_names})
    if unknown:
        raise ConfigError(f"labels CSV {path}: label(s) {unknown} are not classes of the model "
                          f"({', '.join(class_names)})")
    if slides is not None and not set(labels) & set(slides):
        raise ConfigError(f"labels CSV {path} labels none of the {len(slides)} slide(s) given "
                          f"(e.g. {', '.join(sorted(slides)[:3])}; it lists "
                          f"{', '.join(sorted(labels)[:3])}): a slide's name is its file name "
                          "without the extension")
    return {slide: class_names.index(label) for slide, label in labels.items()}


def evaluate(out: Path, labels: dict[str, int], class_names: list[str]) -> dict[str, Any]:
    """Compare OUT/predictions.csv with `labels`; write and return OUT/evaluation.json.
    Slides without a label are named and left out."""
    from lrmil.distill.calibration import balanced_accuracy, brier, ece
    from lrmil.distill.metrics import auc

    path = out / "predictions.csv"
    if not path.is_file():
        raise FileFormatError(f"{path} does not exist: no slide was inferred")
    with path.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    scored = [r for r in rows if r["slide"] in labels]
    unlabelled = sorted(r["slide"] for r in rows if r["slide"] not in labels)
    if not scored:
        raise ConfigError(f"none of the {len(rows)} slides in {path} has a label in the labels "
                          "CSV (--labels)")
    y = np.array([labels[r["slide"]] for r in scored])
    probs = np.array([[float(r[f"prob_{c}"]) for c in class_names] for r in scored])
    called = np.array([class_names.index(r["predicted"]) for r in scored])
    result = {
        "slides": len(scored), "unlabelled": unlabelled,
        "counts": {c: int((y == i).sum()) for i, c in enumerate(class_names)},
        "auc": auc(y, probs), "accuracy": float((called == y).mean()),
        "balanced_accuracy": balanced_accuracy(called, y),
        "ece": ece(probs, y), "brier": brier(probs, y),
        "threshold": scored[0].get("threshold", "argmax"),
    }
    atomic_write_text(out / "evaluation.json", json.dumps(result, indent=2) + "\n")
    return result


def summary_line(result: dict[str, Any]) -> str:
    auc_name = "AUC" if len(result["counts"]) == 2 else "macro AUC"
    auc_text = (f"{result['auc']:.3f}" if np.isfinite(result["auc"])
                else "n/a (the labelled slides hold a single class)")
    return (f"{result['slides']} labelled slides: {auc_name} {auc_text}, accuracy "
            f"{result['accuracy']:.3f}, balanced accuracy {result['balanced_accuracy']:.3f}, "
            f"ECE {result['ece']:.3f} (15 bins), Brier {result['brier']:.3f}")
