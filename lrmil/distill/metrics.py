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


def per_class_auc(labels: np.ndarray, probs: np.ndarray) -> list[float]:
    """One-vs-rest AUC of every class (NaN where the class, or every other, is absent); their
    mean is the macro AUC `auc` gives for more than two classes."""
    labels = np.asarray(labels)
    return [float(_rank_auc(labels[None] == c, probs[None, :, c])[0])
            for c in range(probs.shape[1])]


def _rank_auc(positive: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Mann-Whitney AUC of each row of `scores` (R, N) for the boolean rows of `positive`
    (ties count half); NaN for a row without positives or negatives."""
    from scipy.stats import rankdata

    ranks = rankdata(scores, axis=1)
    n_pos = positive.sum(axis=1).astype(np.float64)
    n_neg = positive.shape[1] - n_pos
    with np.errstate(invalid="ignore", divide="ignore"):
        result = ((ranks * positive).sum(axis=1) - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)
    return np.where((n_pos > 0) & (n_neg > 0), result, np.nan)


# The metrics given a bootstrap confidence interval (the report's headline figures).
CI_METRICS = ("auc", "accuracy", "balanced_accuracy")


def bootstrap_ci(labels: np.ndarray, probs: np.ndarray, predicted: np.ndarray | None = None,
                 resamples: int = 2000, seed: int = 0, level: float = 0.95
                 ) -> dict[str, dict[str, float]]:
    """{metric: {"value", "low", "high"}} for CI_METRICS: the value on all slides and the
    percentile interval over `resamples` resamples of the slides with replacement (seeded).
    Resamples where a metric is undefined (a class drawn no slide) are left out of its
    interval. `predicted`: the decided class of each slide (default argmax)."""
    labels = np.asarray(labels)
    n, n_classes = probs.shape
    predicted = probs.argmax(axis=1) if predicted is None else np.asarray(predicted)
    rows = np.random.default_rng(seed).integers(0, n, size=(resamples, n))
    y, hit = labels[rows], predicted[rows] == labels[rows]
    aucs = [_rank_auc(y == c, probs[rows, c]) for c in range(n_classes)]
    draws = {
        "auc": aucs[1] if n_classes == 2 else np.mean(aucs, axis=0),
        "accuracy": hit.mean(axis=1),
        "balanced_accuracy": _balanced_accuracy(y, hit, n_classes),
    }
    full = classification_metrics(labels, probs)
    full["accuracy"] = float((predicted == labels).mean())
    full["balanced_accuracy"] = float(_balanced_accuracy(labels[None], (predicted == labels)[None],
                                                         n_classes)[0])
    tail = (1 - level) / 2 * 100
    out = {}
    for metric in CI_METRICS:
        values = draws[metric][~np.isnan(draws[metric])]
        low, high = (np.percentile(values, [tail, 100 - tail]) if values.size
                     else (math.nan, math.nan))
        out[metric] = {"value": float(full[metric]), "low": float(low), "high": float(high)}
    return out


def _balanced_accuracy(y: np.ndarray, hit: np.ndarray, n_classes: int) -> np.ndarray:
    """Mean recall over the classes present in each row of `y` (R, N)."""
    recalls = []
    for c in range(n_classes):
        members = y == c
        count = members.sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            recalls.append(np.where(count > 0, (hit & members).sum(axis=1) / count, np.nan))
    return np.nanmean(np.stack(recalls), axis=0)
