"""Per-fold test predictions of every model, one CSV each (`slide,label,prob_<class>...,
logit_<class>...`): the report and the calibration are built from these, so they can be redone
without retraining. The logits keep what rounded probabilities lose (a slide called at 1.0)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from lrmil.errors import FileFormatError
from lrmil.utils.atomic import atomic_path


def write_predictions(path: Path, names: list[str], labels: list[int], logits: np.ndarray,
                      class_names: list[str]) -> None:
    """One row per slide: its label, softmax probabilities and logits (N, C)."""
    logits = np.asarray(logits, dtype=np.float64)
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs = shifted / shifted.sum(axis=1, keepdims=True)
    with atomic_path(path) as tmp, tmp.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["slide", "label", *(f"prob_{c}" for c in class_names),
                         *(f"logit_{c}" for c in class_names)])
        for name, label, p, z in zip(names, labels, probs, logits, strict=True):
            writer.writerow([name, label, *(f"{v:.6f}" for v in p), *(f"{v:.7g}" for v in z)])


def read_predictions(path: Path) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(slides, labels (N,), probs (N, C))."""
    names, labels, probs, _ = read_predictions_with_logits(path)
    return names, labels, probs


def read_predictions_with_logits(path: Path
                                 ) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
    """(slides, labels (N,), probs (N, C), logits (N, C)); files written before logits were
    kept give log-probabilities instead (the same softmax, rounded)."""
    if not path.is_file():
        raise FileFormatError(f"predictions {path} do not exist: the step did not finish")
    with path.open(newline="") as fh:
        rows = list(csv.reader(fh))
    header, body = rows[0], rows[1:]
    prob_cols = [i for i, h in enumerate(header) if h.startswith("prob_")]
    logit_cols = [i for i, h in enumerate(header) if h.startswith("logit_")]
    names = [r[0] for r in body]
    labels = np.array([int(r[1]) for r in body], dtype=np.int64)
    probs = np.array([[float(r[i]) for i in prob_cols] for r in body],
                     dtype=np.float64).reshape(len(body), len(prob_cols))
    if logit_cols:
        logits = np.array([[float(r[i]) for i in logit_cols] for r in body],
                          dtype=np.float64).reshape(len(body), len(logit_cols))
    else:
        logits = np.log(np.clip(probs, 1e-12, None))
    return names, labels, probs, logits
