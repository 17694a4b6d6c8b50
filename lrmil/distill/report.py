"""The run's report, built from the per-fold test predictions: `metrics.json`, `report.md` (per
fold and mean +- std of every metric for teacher, LR baseline, student and the ablations, and the
share of the teacher - baseline AUC gap the student recovers) and `roc.png`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from lrmil.distill.layout import RunLayout
from lrmil.distill.metrics import METRICS, classification_metrics, gap_recovered, mean_std
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


def build_report(run_dir: Path, folds: list[int], models: list[str], class_names: list[str],
                 extra: dict[str, Any] | None = None) -> dict[str, Any]:
    per_fold: dict[str, dict[str, dict[str, float]]] = {}
    for k in folds:
        fold = {}
        for model in models:
            _, labels, probs = read_predictions(RunLayout(run_dir).fold(k).predictions(model))
            fold[model] = classification_metrics(labels, probs)
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
    return {"class_names": class_names, "folds": folds, "models": models,
            "per_fold": per_fold, "summary": summary, **(extra or {})}


def _fmt(mean: float, std: float | None = None) -> str:
    if np.isnan(mean):
        return "-"
    return f"{mean:.3f}" if std is None or np.isnan(std) else f"{mean:.3f} ± {std:.3f}"


SUMMARY_HEADER = ["model", "AUC", "accuracy", "balanced accuracy", "weighted F1",
                  "gap recovered"]


def summary_rows(report: dict[str, Any]) -> list[list[str]]:
    """One row per model under SUMMARY_HEADER: mean ± std over folds, and the share of the
    teacher - baseline gap of the mean AUCs that a student recovers."""
    rows = []
    for model in report["models"]:
        s = report["summary"][model]
        gap = (_fmt(s["gap_recovered_of_means"]["mean"]) if "gap_recovered_of_means" in s
               else "")
        rows.append([LABELS.get(model, model), *(_fmt(s[m]["mean"], s[m]["std"])
                                                 for m in METRICS), gap])
    return rows


def markdown(report: dict[str, Any]) -> str:
    models = report["models"]
    lines = ["# LRMIL distillation report", "",
             f"Classes: {', '.join(report['class_names'])}; {len(report['folds'])} folds "
             "(test sets). Mean ± std over folds.", "",
             "| " + " | ".join(SUMMARY_HEADER) + " |", "|---" * len(SUMMARY_HEADER) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in summary_rows(report)]
    lines += ["", "Gap recovered = (AUC student - AUC baseline) / (AUC teacher - AUC baseline), "
              "of the mean AUCs.", "", "## AUC per fold", "",
              "| fold | " + " | ".join(LABELS.get(m, m) for m in models) + " |",
              "|---|" + "---|" * len(models)]
    for k in report["folds"]:
        fold = report["per_fold"][str(k)]
        lines.append(f"| {k} | " + " | ".join(_fmt(fold[m]["auc"]) for m in models) + " |")
    if "cohort" in report:
        lines += ["", *cohort_markdown(report["cohort"])]
    return "\n".join(lines) + "\n"


def cohort_markdown(cohort: dict[str, Any]) -> list[str]:
    """Slides and patients per class, and the slides left out for want of a label."""
    lines = ["## Cohort", "", "| class | slides | patients |", "|---|---|---|"]
    lines += [f"| {name} | {c['slides']} | {c['patients']} |"
              for name, c in cohort["counts"].items()]
    lines.append(f"| all | {cohort['slides']} | {cohort['patients']} |")
    if cohort.get("unlabelled"):
        names = cohort["unlabelled"]
        lines += ["", f"{len(names)} slide(s) with features but no label, not used: "
                  + ", ".join(names)]
    return lines


def roc_plot(run_dir: Path, report: dict[str, Any], path: Path) -> None:
    """ROC of the pooled test predictions of every model (micro-averaged one-vs-rest for more
    than two classes)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import roc_curve

    fig, ax = plt.subplots(figsize=(5, 5), dpi=100)
    for model in report["models"]:
        labels, probs = [], []
        for k in report["folds"]:
            _, y, p = read_predictions(RunLayout(run_dir).fold(k).predictions(model))
            labels.append(y)
            probs.append(p)
        y, p = np.concatenate(labels), np.concatenate(probs)
        if p.shape[1] == 2:
            fpr, tpr, _ = roc_curve(y, p[:, 1])
        else:
            fpr, tpr, _ = roc_curve(np.eye(p.shape[1])[y].ravel(), p.ravel())
        auc = report["summary"][model]["auc"]["mean"]
        ax.plot(fpr, tpr, label=f"{LABELS.get(model, model)} (AUC {auc:.3f})")
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title("ROC, test sets of all folds")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


def write_report(run_dir: Path, report: dict[str, Any]) -> str:
    text = markdown(report)
    layout = RunLayout(run_dir)
    atomic_write_text(layout.metrics, json.dumps(report, indent=2, allow_nan=True))
    atomic_write_text(layout.report, text)
    roc_plot(run_dir, report, layout.roc)
    return text
