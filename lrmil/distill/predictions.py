"""Per-fold test predictions of every model, one CSV each: the report is built from these, so
it can be redone without retraining."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from lrmil.errors import FileFormatError
from lrmil.utils.atomic import atomic_path


def write_predictions(path: Path, names: list[str], labels: list[int], probs: np.ndarray,
                      class_names: list[str]) -> None:
    with atomic_path(path) as tmp, tmp.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["slide", "label", *(f"prob_{c}" for c in class_names)])
        for name, label, row in zip(names, labels, probs, strict=True):
            writer.writerow([name, label, *(f"{p:.6f}" for p in row)])


def read_predictions(path: Path) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(slides, labels (N,), probs (N, C))."""
    if not path.is_file():
        raise FileFormatError(f"predictions {path} do not exist: the step did not finish")
    with path.open(newline="") as fh:
        rows = list(csv.reader(fh))
    body = rows[1:]
    names = [r[0] for r in body]
    labels = np.array([int(r[1]) for r in body], dtype=np.int64)
    probs = np.array([[float(x) for x in r[2:]] for r in body], dtype=np.float64)
    return names, labels, probs.reshape(len(body), len(rows[0]) - 2)
