"""Slide-level metrics: AUC (one-vs-rest macro for more than two classes), accuracy, balanced
accuracy, weighted F1; and the share of the teacher - baseline gap the student recovers."""

from __future__ import annotations

import math

import numpy as np

METRICS = ("auc", "accuracy", "balanced_accuracy", "f1_weighted")


def auc(labels: np.ndarray, probs: np.ndarray) -> float:
    """ROC AUC of `probs` (N, C); NaN where a class is absent (undefined, not 0.5)."""
    from sklearn.metrics import roc_auc_score

    labels = np.asarray(labels)
    n_classes = probs.shape[1]
    if len(np.unique(labels)) < 2:
        return math.nan
    if n_classes == 2:
        return float(roc_auc_score(labels, probs[:, 1]))
    if len(np.unique(labels)) < n_classes:
        return math.nan
    return float(roc_auc_score(labels, probs, multi_class="ovr", average="macro",
                               labels=list(range(n_classes))))


def classification_metrics(labels: np.ndarray, probs: np.ndarray) -> dict[str, float]:
    from sklearn.metrics import f1_score

    labels = np.asarray(labels)
    pred = probs.argmax(axis=1)
    present = np.unique(labels)
    # Balanced accuracy: the mean recall over the classes present (sklearn's definition).
    recalls = [float((pred[labels == c] == c).mean()) for c in present]
    return {
        "auc": auc(labels, probs),
        "accuracy": float((pred == labels).mean()),
        "balanced_accuracy": float(np.mean(recalls)),
        "f1_weighted": float(f1_score(labels, pred, labels=list(range(probs.shape[1])),
                                      average="weighted", zero_division=0)),
    }


def gap_recovered(teacher: float, baseline: float, student: float) -> float:
    """(student - baseline) / (teacher - baseline); NaN when the teacher is not better."""
    gap = teacher - baseline
    if not gap > 0:
        return math.nan
    return (student - baseline) / gap


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample std over folds, ignoring NaN entries."""
    arr = np.asarray([v for v in values if not math.isnan(v)], dtype=np.float64)
    if arr.size == 0:
        return math.nan, math.nan
    return float(arr.mean()), float(arr.std(ddof=1)) if arr.size > 1 else 0.0
