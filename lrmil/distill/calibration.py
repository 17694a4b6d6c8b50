"""Calibration of the deployable model from the folds' out-of-fold predictions.

Every labelled slide is a test slide of exactly one fold, so the fold students' test logits,
pooled, are predictions on slides none of them trained on. On these:
- temperature scaling: one T > 0 dividing the logits, fitted by negative log-likelihood
  (bounded search over T in [0.5, 20]; a fit at a bound is reported, it means the search range,
  not the data, decided). T leaves the ranking (AUC) and the argmax unchanged; it makes the
  probabilities mean what they say (of the slides given 0.8, about 80% are that class).
- for two classes, a decision threshold on the calibrated P(second class) maximising the
  balanced accuracy (the mean of the two recalls), so a rare class is not ignored.
The export applies T inside its graphs (every engine gives calibrated probabilities) and
records both in its sidecar; `lrmil infer` decides with the threshold.

Measured before and after: negative log-likelihood, ECE (15 equal-width bins of the top-label
confidence: sum over bins of |bin| / n * |accuracy - mean confidence|), Brier score (two
classes: mean (p - y)^2 of the second class; more: mean over slides of the summed squared
errors over classes), and a reliability diagram, RUN/calibration.png.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from lrmil.distill.layout import RunLayout
from lrmil.distill.predictions import read_predictions_with_logits
from lrmil.utils.atomic import atomic_path, atomic_write_text

T_BOUNDS = (0.5, 20.0)
ECE_BINS = 15
MODEL = "student"  # the model whose out-of-fold predictions calibrate the deployed student


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    z = np.asarray(logits, dtype=np.float64) / temperature
    z = np.exp(z - z.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)


def nll(probs: np.ndarray, labels: np.ndarray) -> float:
    picked = probs[np.arange(len(labels)), np.asarray(labels)]
    return float(-np.log(np.clip(picked, 1e-300, None)).mean())


def fit_temperature(logits: np.ndarray, labels: np.ndarray,
                    bounds: tuple[float, float] = T_BOUNDS) -> tuple[float, bool]:
    """(T minimising the NLL of softmax(logits / T), whether T is at a bound of the search)."""
    from scipy.optimize import minimize_scalar

    low, high = math.log(bounds[0]), math.log(bounds[1])
    found = minimize_scalar(lambda log_t: nll(softmax(logits, math.exp(log_t)), labels),
                            bounds=(low, high), method="bounded",
                            options={"xatol": 1e-5})
    temperature = math.exp(float(found.x))
    at_bound = bool(min(abs(found.x - low), abs(found.x - high)) < 1e-3)
    return temperature, at_bound


def ece(probs: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> float:
    """Expected calibration error of the top label over `bins` equal-width bins of (0, 1]."""
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == np.asarray(labels)
    which = np.clip(np.ceil(confidence * bins).astype(int) - 1, 0, bins - 1)
    total = 0.0
    for b in range(bins):
        members = which == b
        if members.any():
            total += members.mean() * abs(correct[members].mean() - confidence[members].mean())
    return float(total)


def reliability(probs: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS
                ) -> list[dict[str, float]]:
    """Per non-empty bin: mean confidence, accuracy, slide count (the diagram's points)."""
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == np.asarray(labels)
    which = np.clip(np.ceil(confidence * bins).astype(int) - 1, 0, bins - 1)
    return [{"confidence": float(confidence[which == b].mean()),
             "accuracy": float(correct[which == b].mean()), "slides": int((which == b).sum())}
            for b in range(bins) if (which == b).any()]


def brier(probs: np.ndarray, labels: np.ndarray) -> float:
    labels = np.asarray(labels)
    if probs.shape[1] == 2:
        return float(((probs[:, 1] - labels) ** 2).mean())
    onehot = np.eye(probs.shape[1])[labels]
    return float(((probs - onehot) ** 2).sum(axis=1).mean())


def balanced_accuracy(predicted: np.ndarray, labels: np.ndarray) -> float:
    labels = np.asarray(labels)
    return float(np.mean([(predicted[labels == c] == c).mean() for c in np.unique(labels)]))


def choose_threshold(p_positive: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """(threshold, its balanced accuracy): slides with P(second class) >= threshold are
    called the second class. Candidates are the midpoints between consecutive distinct
    probabilities (and 0.5); ties go to the one nearest 0.5."""
    values = np.unique(p_positive)
    candidates = np.unique(np.r_[(values[1:] + values[:-1]) / 2, 0.5])
    scores = [balanced_accuracy((p_positive >= t).astype(int), labels) for t in candidates]
    best = max(scores)
    tied = candidates[np.isclose(scores, best, rtol=0, atol=1e-12)]
    threshold = float(tied[np.argmin(np.abs(tied - 0.5))])
    return threshold, best


def decide(probs: np.ndarray, threshold: float | None) -> np.ndarray:
    """The called class of each row of `probs` (N, C): the threshold on the second class for
    two classes when one is given, else the most probable class."""
    probs = np.atleast_2d(probs)
    if threshold is not None and probs.shape[1] == 2:
        return (probs[:, 1] >= threshold).astype(int)
    return probs.argmax(axis=1)


def scores(probs: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    return {"nll": nll(probs, labels), "ece": ece(probs, labels), "brier": brier(probs, labels)}


@dataclass
class Calibration:
    temperature: float
    at_bound: bool  # the fit stopped at a bound of T_BOUNDS
    slides: int  # out-of-fold slides it was fitted on
    before: dict[str, float]  # nll, ece, brier at T = 1
    after: dict[str, float]  # ... at the fitted T
    threshold: float | None = None  # two classes only
    threshold_balanced_accuracy: float | None = None  # on the slides it was chosen on
    argmax_balanced_accuracy: float | None = None  # the same slides, most probable class
    bounds: tuple[float, float] = T_BOUNDS
    bins: int = ECE_BINS
    reliability: dict[str, list[dict[str, float]]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Calibration:
        return cls(**{**data, "bounds": tuple(data["bounds"])})

    def note(self) -> str | None:
        """A warning to print, when the fitted T is at a bound of its search range."""
        if not self.at_bound:
            return None
        return (f"calibration: the temperature {self.temperature:.3g} is at a bound of its "
                f"search range {self.bounds}: the out-of-fold predictions are "
                + ("very over-confident" if self.temperature > 1 else "very under-confident")
                + "; the calibrated probabilities are still off")


def fit_calibration(logits: np.ndarray, labels: np.ndarray) -> Calibration:
    labels = np.asarray(labels)
    temperature, at_bound = fit_temperature(logits, labels)
    raw, calibrated = softmax(logits), softmax(logits, temperature)
    result = Calibration(temperature, at_bound, len(labels), scores(raw, labels),
                         scores(calibrated, labels),
                         reliability={"before": reliability(raw, labels),
                                      "after": reliability(calibrated, labels)})
    if logits.shape[1] == 2:
        result.threshold, result.threshold_balanced_accuracy = choose_threshold(
            calibrated[:, 1], labels)
        result.threshold_balanced_accuracy = float(result.threshold_balanced_accuracy)
        result.argmax_balanced_accuracy = balanced_accuracy(calibrated.argmax(axis=1), labels)
    return result


def out_of_fold(layout: RunLayout, folds: list[int], model: str = MODEL
                ) -> tuple[np.ndarray, np.ndarray]:
    """(logits, labels) of `model` over every fold's test slides."""
    logits, labels = [], []
    for k in folds:
        _, y, _, z = read_predictions_with_logits(layout.fold(k).predictions(model))
        logits.append(z)
        labels.append(y)
    return np.concatenate(logits), np.concatenate(labels)


def calibrate_run(layout: RunLayout, folds: list[int]) -> Calibration:
    """Fit on the students' out-of-fold predictions; write RUN/calibration.json and the
    reliability diagram RUN/calibration.png."""
    logits, labels = out_of_fold(layout, folds)
    result = fit_calibration(logits, labels)
    atomic_write_text(layout.calibration, json.dumps(result.to_dict(), indent=2) + "\n")
    reliability_plot(result, layout.calibration_plot)
    return result


def read_calibration(layout: RunLayout) -> Calibration | None:
    path = layout.calibration
    return Calibration.from_dict(json.loads(path.read_text())) if path.is_file() else None


def reliability_plot(result: Calibration, path: Any) -> None:
    """Accuracy against mean confidence per bin, before and after (marker area ~ slides)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 5), dpi=100)
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1, label="perfect")
    for key, colour, title in (("before", "tab:red", "uncalibrated"),
                               ("after", "tab:blue", f"T = {result.temperature:.2f}")):
        points = result.reliability[key]
        x = [p["confidence"] for p in points]
        y = [p["accuracy"] for p in points]
        ax.plot(x, y, color=colour, linewidth=1)
        ax.scatter(x, y, s=[12 + 4 * p["slides"] for p in points], color=colour, alpha=0.7,
                   label=f"{title} (ECE {getattr(result, key)['ece']:.3f})")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("mean confidence of the called class")
    ax.set_ylabel("share called correctly")
    ax.set_title(f"Reliability, {result.slides} out-of-fold slides, {result.bins} bins",
                 fontsize=10)
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


def calibration_markdown(result: Calibration, class_names: list[str]) -> list[str]:
    """The report's calibration section."""
    lines = ["## Calibration (deployed model)", "",
             f"Temperature scaling fitted on the students' {result.slides} out-of-fold test "
             f"slides by negative log-likelihood: T = {result.temperature:.3f} (searched in "
             f"[{result.bounds[0]}, {result.bounds[1]}]"
             + ("; at a bound: the fit is limited by the range)" if result.at_bound else ")")
             + ". The export applies it to the final model's logits.", "",
             "| | NLL | ECE (15 bins) | Brier |", "|---|---|---|---|"]
    for key, title in (("before", "uncalibrated"), ("after", "calibrated")):
        s = getattr(result, key)
        lines.append(f"| {title} | {s['nll']:.3f} | {s['ece']:.3f} | {s['brier']:.3f} |")
    if result.threshold is not None:
        lines += ["", f"Decision threshold: {class_names[1]} when its calibrated probability is "
                  f">= {result.threshold:.3f} (chosen for balanced accuracy on the same "
                  f"out-of-fold slides: {result.threshold_balanced_accuracy:.3f}, against "
                  f"{result.argmax_balanced_accuracy:.3f} for the most probable class; chosen "
                  "on these slides, so optimistic for them)."]
    lines += ["", "Reliability diagram: calibration.png."]
    return lines
