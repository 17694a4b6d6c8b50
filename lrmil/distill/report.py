"""The run's report, built from the per-fold test predictions: `metrics.json`, `report.md` (per
fold and mean +- std of every metric for teacher, LR baseline, student and the ablations, the
share of the teacher - baseline AUC gap the student recovers, the pooled out-of-fold metrics with
95% bootstrap intervals, per-class AUCs for more than two classes, slide and patient counts per
class and fold) and `roc.png`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from lrmil.distill.layout import RunLayout
from lrmil.distill.metrics import (
    CI_METRICS,
    METRICS,
    bootstrap_ci,
    classification_metrics,
    gap_recovered,
    mean_std,
    per_class_auc,
)
from lrmil.distill.predictions import read_predictions
from lrmil.utils.atomic import atomic_path, atomic_write_text

LABELS = {
    "teacher": "HR teacher",
    "baseline": "LR baseline",
    "student": "LRMIL student",
    "student_no_stage1": "student, no stage 1",
    "student_no_attn_kd": "student, no attention KD",
    "student_no_logit_kd": "student, no logit KD",
}


BOOTSTRAP_RESAMPLES = 2000


def pooled_predictions(run_dir: Path, folds: list[int], model: str
                       ) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(slides, labels, probabilities) of `model` over the test sets of every fold."""
    names, labels, probs = [], [], []
    for k in folds:
        n, y, p = read_predictions(RunLayout(run_dir).fold(k).predictions(model))
        names += n
        labels.append(y)
        probs.append(p)
    return names, np.concatenate(labels), np.concatenate(probs)


def build_report(run_dir: Path, folds: list[int], models: list[str], class_names: list[str],
                 extra: dict[str, Any] | None = None, seed: int = 0) -> dict[str, Any]:
    """The report's content (metrics.json); `seed` seeds the bootstrap."""
    per_fold: dict[str, dict[str, dict[str, Any]]] = {}
    for k in folds:
        fold: dict[str, dict[str, Any]] = {}
        for model in models:
            _, labels, probs = read_predictions(RunLayout(run_dir).fold(k).predictions(model))
            fold[model] = classification_metrics(labels, probs)
            if len(class_names) > 2:
                fold[model]["auc_per_class"] = per_class_auc(labels, probs)
        for model in models:
            if model.startswith("student"):
                fold[model]["gap_recovered"] = gap_recovered(
                    fold["teacher"]["auc"], fold["baseline"]["auc"], fold[model]["auc"])
        per_fold[str(k)] = fold
    summary: dict[str, dict[str, dict[str, float]]] = {}
    for model in models:
        names = [*METRICS, "gap_recovered"] if model.startswith("student") else list(METRICS)
        summary[model] = {}
        for metric in names:
            mean, std = mean_std([per_fold[str(k)][model][metric] for k in folds])
            summary[model][metric] = {"mean": mean, "std": std}
        if model.startswith("student"):
            # The share of the gap of the mean AUCs: what performance.md's target refers to.
            summary[model]["gap_recovered_of_means"] = {"mean": gap_recovered(
                summary["teacher"]["auc"]["mean"], summary["baseline"]["auc"]["mean"],
                summary[model]["auc"]["mean"]), "std": float("nan")}
    pooled = {}
    for model in models:
        _, labels, probs = pooled_predictions(run_dir, folds, model)
        pooled[model] = {"slides": len(labels), "resamples": BOOTSTRAP_RESAMPLES,
                         **bootstrap_ci(labels, probs, resamples=BOOTSTRAP_RESAMPLES, seed=seed)}
        if len(class_names) > 2:
            pooled[model]["auc_per_class"] = per_class_auc(labels, probs)
    return {"class_names": class_names, "folds": folds, "models": models,
            "per_fold": per_fold, "summary": summary, "pooled": pooled, **(extra or {})}


def _fmt(mean: float, std: float | None = None) -> str:
    if np.isnan(mean):
        return "-"
    return f"{mean:.3f}" if std is None or np.isnan(std) else f"{mean:.3f} ± {std:.3f}"


def auc_name(class_names: list[str]) -> str:
    """"AUC" for two classes; "macro AUC" (mean of the one-vs-rest AUCs) for more."""
    return "AUC" if len(class_names) == 2 else "macro AUC"


def summary_header(report: dict[str, Any]) -> list[str]:
    """The columns of `summary_rows`."""
    return ["model", auc_name(report["class_names"]), "accuracy", "balanced accuracy",
            "weighted F1", "gap recovered"]


def summary_rows(report: dict[str, Any]) -> list[list[str]]:
    """One row per model under `summary_header(report)`: mean ± std over folds, and the share of the
    teacher - baseline gap of the mean AUCs that a student recovers."""
    rows = []
    for model in report["models"]:
        s = report["summary"][model]
        gap = (_fmt(s["gap_recovered_of_means"]["mean"]) if "gap_recovered_of_means" in s
               else "")
        rows.append([LABELS.get(model, model), *(_fmt(s[m]["mean"], s[m]["std"])
                                                 for m in METRICS), gap])
    return rows


def _ci(entry: dict[str, float]) -> str:
    if np.isnan(entry["value"]):
        return "-"
    return f"{entry['value']:.3f} [{entry['low']:.3f}, {entry['high']:.3f}]"


def pooled_markdown(report: dict[str, Any]) -> list[str]:
    """The pooled out-of-fold metrics with their intervals, and per-class AUCs (> 2 classes)."""
    pooled, names = report["pooled"], report["class_names"]
    any_model = next(iter(pooled.values()))
    header = ["model", auc_name(names), "accuracy", "balanced accuracy"]
    lines = ["## Pooled test slides, 95% confidence intervals", "",
             f"Every fold's test slides together ({any_model['slides']} slides, each tested once "
             f"by the model of its fold); 95% percentile intervals over "
             f"{any_model['resamples']} bootstrap resamples of the slides.", "",
             "| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
    lines += [f"| {LABELS.get(m, m)} | " + " | ".join(_ci(p[k]) for k in CI_METRICS) + " |"
              for m, p in pooled.items()]
    if len(names) > 2:
        lines += ["", "### One-vs-rest AUC per class (pooled test slides)", "",
                  "| model | " + " | ".join(names) + " | macro AUC |",
                  "|---|" + "---|" * (len(names) + 1)]
        lines += [f"| {LABELS.get(m, m)} | " + " | ".join(_fmt(a) for a in p["auc_per_class"])
                  + f" | {_fmt(p['auc']['value'])} |" for m, p in pooled.items()]
    return lines


def markdown(report: dict[str, Any]) -> str:
    models = report["models"]
    header = summary_header(report)
    auc = auc_name(report["class_names"])
    lines = ["# LRMIL distillation report", "",
             f"Classes: {', '.join(report['class_names'])}; {len(report['folds'])} folds "
             "(test sets). Mean ± std over folds"
             + (" (macro AUC: the mean of the per-class one-vs-rest AUCs)."
                if auc != "AUC" else "."), "",
             "| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in summary_rows(report)]
    lines += ["", f"Gap recovered = ({auc} student - {auc} baseline) / ({auc} teacher - "
              f"{auc} baseline), of the mean {auc}s.", ""]
    if "pooled" in report:
        lines += [*pooled_markdown(report), ""]
    lines += [f"## {auc} per fold", "",
              "| fold | " + " | ".join(LABELS.get(m, m) for m in models) + " |",
              "|---|" + "---|" * len(models)]
    for k in report["folds"]:
        fold = report["per_fold"][str(k)]
        lines.append(f"| {k} | " + " | ".join(_fmt(fold[m]["auc"]) for m in models) + " |")
    if report.get("stage1"):
        lines += ["", *stage1_markdown(report["stage1"])]
    if report.get("calibration"):
        from lrmil.distill.calibration import Calibration, calibration_markdown

        lines += ["", *calibration_markdown(Calibration.from_dict(report["calibration"]),
                                            report["class_names"])]
    if report.get("final"):
        final = report["final"]
        lines += ["", "## Final model", "",
                  f"RUN/final: teacher, stage 1 and student trained again on all "
                  f"{final['slides']} labelled slides; teacher {final['epochs']['teacher']} and "
                  f"student {final['epochs']['student']} epochs, the median of the folds' best "
                  "epochs (final/training.json). `lrmil export` and `lrmil infer` use it."]
    if "cohort" in report:
        lines += ["", *cohort_markdown(report["cohort"])]
    if "fold_counts" in report:
        lines += ["", *fold_counts_markdown(report["fold_counts"], report["class_names"])]
    return "\n".join(lines) + "\n"


def fold_counts_markdown(counts: dict[str, Any], class_names: list[str]) -> list[str]:
    """Slides / patients per class in every fold's train, validation and test sets."""
    lines = ["## Slides / patients per fold", "",
             "| fold | set | " + " | ".join(class_names) + " |",
             "|---|---|" + "---|" * len(class_names)]
    for k, roles in counts.items():
        for role, by_class in roles.items():
            cells = [f"{by_class[c]['slides']} / {by_class[c]['patients']}" for c in class_names]
            lines.append(f"| {k} | {role} | " + " | ".join(cells) + " |")
    return lines


def cohort_markdown(cohort: dict[str, Any]) -> list[str]:
    """Slides and patients per class, the unlabelled slides, and the slides left out for want
    of a row in the labels CSV."""
    lines = ["## Cohort", "", "| class | slides | patients |", "|---|---|---|"]
    lines += [f"| {name} | {c['slides']} | {c['patients']} |"
              for name, c in cohort["counts"].items()]
    lines.append(f"| all | {cohort['slides']} | {cohort['patients']} |")
    if cohort.get("unlabelled"):
        names = cohort["unlabelled"]
        lines += ["", f"{len(names)} unlabelled slide(s) (empty label; stage 1 only, with "
                  "stage1.slides=all): " + ", ".join(names)]
    if cohort.get("unlisted"):
        names = cohort["unlisted"]
        lines += ["", f"{len(names)} slide(s) with features but not in the labels CSV, not "
                  "used: " + ", ".join(names)]
    return lines


def stage1_markdown(stage1: dict[str, Any]) -> list[str]:
    """Stage 1's objective, weights and slides, how many slides each fold's saw and, where the
    teacher's attention weights the children, that teacher's validation AUC."""
    teacher = stage1["weights"] == "teacher"
    lines = ["## Stage 1", "", f"Objective {stage1['objective']}, children weighted by "
             f"{'the teacher' if teacher else 'uniform weights'}, slides: {stage1['slides']} ("
             + ("the fold's labelled training slides" if stage1["slides"] == "train" else
                "every slide outside the fold's test set and its patients") + ").", "",
             "| fold | labelled slides | unlabelled slides |"
             + (" teacher validation AUC |" if teacher else ""), "|---" * (3 + teacher) + "|"]
    for k, n in stage1["per_fold"].items():
        lines.append(f"| {k} | {n['labelled']} | {n['unlabelled']} |"
                     + (f" {n['teacher_val_auc']:.3f} |" if teacher else ""))
    if teacher and stage1["slides"] == "all":
        lines += ["", "The teacher's attention weights the HR children on slides it never saw, "
                  "unlabelled ones included: where a fold's teacher validates poorly, that "
                  "attention misleads its stage 1 (`stage1.weights=uniform` does without it)."]
    return lines


def roc_plot(run_dir: Path, report: dict[str, Any], path: Path) -> None:
    """ROC of the pooled test predictions (every fold's test slides): one panel with every
    model for two classes; for more, one panel per model with each class's one-vs-rest curve
    and their macro average (the mean TPR over the union of the curves' FPRs, whose area is
    the macro AUC the legend gives)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models, names = report["models"], report["class_names"]
    panels = 1 if len(names) == 2 else len(models)
    cols = min(panels, 3)
    rows = -(-panels // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 5 * rows), dpi=100, squeeze=False)
    for i, model in enumerate(models):
        _, y, p = pooled_predictions(run_dir, report["folds"], model)
        label = LABELS.get(model, model)
        if len(names) == 2:
            ax = axes[0, 0]
            fpr, tpr = roc_points(y == 1, p[:, 1])
            ax.plot(fpr, tpr, label=f"{label} (AUC {_area(fpr, tpr):.3f})")
            continue
        ax = axes.flat[i]
        curves = [roc_points(y == c, p[:, c]) for c in range(len(names))]
        for name, (fpr, tpr) in zip(names, curves, strict=True):
            ax.plot(fpr, tpr, linewidth=1, label=f"{name} vs rest (AUC {_area(fpr, tpr):.3f})")
        grid, mean_tpr = macro_average(curves)
        ax.plot(grid, mean_tpr, color="black", linewidth=2,
                label=f"macro average (macro AUC {_area(grid, mean_tpr):.3f})")
        ax.set_title(label, fontsize=10)
    for ax in axes.flat[:panels]:
        ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
        ax.set_xlabel("false positive rate")
        ax.set_ylabel("true positive rate")
        ax.legend(loc="lower right", fontsize=7)
    for ax in axes.flat[panels:]:
        ax.axis("off")
    fig.suptitle("ROC, pooled test slides of all folds", fontsize=11)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


def roc_points(positive: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(FPR, TPR) of a one-vs-rest ROC curve, from (0, 0) to (1, 1)."""
    from sklearn.metrics import roc_curve

    if positive.all() or not positive.any():
        return np.array([0.0, 1.0]), np.array([0.0, 1.0])
    fpr, tpr, _ = roc_curve(positive.astype(int), scores)
    return fpr, tpr


def macro_average(curves: list[tuple[np.ndarray, np.ndarray]]
                  ) -> tuple[np.ndarray, np.ndarray]:
    """The mean TPR of ROC curves over the union of their FPRs. At a vertical step a curve has
    two TPRs at one FPR; both ends are averaged (each grid FPR appears twice), so between grid
    points every curve is linear and the area of the average is the mean of the areas."""
    grid = np.unique(np.concatenate([fpr for fpr, _ in curves]))
    lows, highs = [], []
    for fpr, tpr in curves:
        x, first = np.unique(fpr, return_index=True)
        last = np.r_[first[1:] - 1, len(fpr) - 1]  # fpr is sorted: each value's last row
        low, high = tpr[first], tpr[last]
        j = np.clip(np.searchsorted(x, grid, side="right") - 1, 0, len(x) - 1)
        exact = x[j] == grid
        k = np.minimum(j + 1, len(x) - 1)
        span = np.where(k > j, x[k] - x[j], 1.0)
        between = high[j] + (low[k] - high[j]) * (grid - x[j]) / span
        lows.append(np.where(exact, low[j], between))
        highs.append(np.where(exact, high[j], between))
    mean = np.stack([np.mean(lows, axis=0), np.mean(highs, axis=0)], axis=1).ravel()
    return np.repeat(grid, 2), mean


def _area(fpr: np.ndarray, tpr: np.ndarray) -> float:
    return float(np.trapezoid(tpr, fpr))


def write_report(run_dir: Path, report: dict[str, Any]) -> str:
    text = markdown(report)
    layout = RunLayout(run_dir)
    atomic_write_text(layout.metrics, json.dumps(report, indent=2, allow_nan=True))
    atomic_write_text(layout.report, text)
    roc_plot(run_dir, report, layout.roc)
    return text
