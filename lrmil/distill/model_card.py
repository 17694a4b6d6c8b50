"""RUN/MODEL_CARD.md: what the deployable model is, what it was trained and tested on, how well
it did, how far its probabilities can be trusted, and what it must not be used for.

Rebuilt from the run folder's files each time (config.json, metrics.json, calibration.json,
final/training.json and the export folders' sidecars), by `lrmil distill` and again by
`lrmil export`, so it always says what the folder holds."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lrmil.distill.layout import RunLayout
from lrmil.utils.atomic import atomic_write_text

INTENDED_USE = (
    "Slide-level classification of whole-slide images from low-magnification (LR) patches "
    "only, as a research tool or a second reader: the attention heatmaps and the QuPath tiles "
    "point a pathologist to the regions that drove the call. Not a diagnostic device; every "
    "call is to be checked by a pathologist.")
LIMITS = [
    "Validated by cross-validation on the training cohort only: no external cohort, scanner, "
    "stain or site was tested. Expect lower accuracy elsewhere and validate locally first.",
    "The final model is trained on every labelled slide; its own accuracy cannot be measured "
    "on them. The cross-validated figures estimate it (same recipe, a fold's share of the "
    "data less).",
    "The temperature and threshold were fitted on the fold students' out-of-fold predictions "
    "and applied to the final model, which saw more slides for the same number of epochs: its "
    "calibration is expected, not measured. The threshold was chosen on the slides its "
    "balanced accuracy is reported on (optimistic).",
    "Slides must be tiled as in training (magnification, patch size, tissue settings are in "
    "the export's sidecar); a slide of another magnification is read at the model's.",
    "Classes outside the training labels are forced into one of them.",
]


def _read(path: Path) -> Any:
    return json.loads(path.read_text()) if path.is_file() else None


def _ci(entry: dict[str, float]) -> str:
    return f"{entry['value']:.3f} (95% CI {entry['low']:.3f}-{entry['high']:.3f})"


def model_card(run: Path) -> str:
    layout = RunLayout(run)
    config = _read(layout.config) or {}
    metrics = _read(layout.metrics) or {}
    calibration = _read(layout.calibration)
    training = _read(layout.final_training)
    classes = config.get("class_names", [])
    encoder = config.get("encoder", {})
    lines = [f"# Model card: {run.name}", "",
             "LRMIL student: gated attention MIL on low-resolution patches, distilled from a "
             "high-resolution teacher (teacher -> stage-1 encoder distillation -> student).",
             "", "## Model", ""]
    if training:
        lines += [f"- Deployed model: RUN/final, trained on all {training['slides']} labelled "
                  f"slides ({training['patients']} patients); teacher "
                  f"{training['epochs']['teacher']} and student {training['epochs']['student']} "
                  "epochs (the median of the folds' best epochs: "
                  + "; ".join(f"{m} {', '.join(map(str, v.values()))}"
                              for m, v in training["fold_best_epochs"].items())
                  + f"), stage 1: {_stage1(training['stage1'])}."]
    else:
        lines.append("- No final model in this run (distill ran with final=false): export and "
                     "inference need --fold K or --ensemble.")
    lines += [f"- Classes: {', '.join(map(str, classes))}",
              f"- LR encoder: {encoder.get('lr', '?')} (weights digest "
              f"{encoder.get('lr_digest') or 'none: built-in, seed ' + str(encoder.get('seed', 0))}"
              f"); HR teacher encoder: {encoder.get('hr', '?')}",
              f"- LR input: {config.get('patch_size', '?')} px patches at "
              f"{config.get('lr_magnification', '?')}x; HR children per LR patch: "
              f"{config.get('r', '?')}^2",
              f"- Settings: RUN/config.json (seed {config.get('seed', '?')}, "
              f"{config.get('folds', '?')} folds)", "", "## Data", ""]
    cohort = metrics.get("cohort")
    if cohort:
        lines.append(f"{cohort['slides']} labelled slides, {cohort['patients']} patients:")
        lines += [f"- {name}: {c['slides']} slides / {c['patients']} patients"
                  for name, c in cohort["counts"].items()]
        if cohort.get("unlabelled"):
            lines.append(f"- {len(cohort['unlabelled'])} slides with features but no label "
                         "were not used")
        lines.append("- Per fold: report.md, 'Slides / patients per fold'.")
    pooled = metrics.get("pooled", {})
    if pooled:
        auc = "AUC" if len(classes) == 2 else "macro AUC"
        lines += ["", "## Cross-validated performance", "",
                  f"Pooled test slides of the {len(metrics.get('folds', []))} folds (each slide "
                  "tested by the fold model that did not train on it); 95% bootstrap CIs over "
                  "slides (report.md has every model and the per-fold figures).", "",
                  f"| model | {auc} | accuracy | balanced accuracy |", "|---|---|---|---|"]
        for model in ("student", "teacher", "baseline"):
            if model in pooled:
                p = pooled[model]
                lines.append(f"| {model} | {_ci(p['auc'])} | {_ci(p['accuracy'])} | "
                             f"{_ci(p['balanced_accuracy'])} |")
    if calibration:
        before, after = calibration["before"], calibration["after"]
        lines += ["", "## Calibration", "",
                  f"- Temperature T = {calibration['temperature']:.3f} (probabilities = "
                  f"softmax(logits / T)), fitted by NLL on {calibration['slides']} out-of-fold "
                  "slides" + (" - at a bound of its range, so still off" if
                              calibration["at_bound"] else "") + "; applied inside the "
                  "exported graphs (every engine).",
                  f"- ECE (15 bins): {before['ece']:.3f} before, {after['ece']:.3f} after; "
                  f"Brier {before['brier']:.3f} -> {after['brier']:.3f}; NLL "
                  f"{before['nll']:.3f} -> {after['nll']:.3f}. Reliability: calibration.png."]
        if calibration.get("threshold") is not None:
            lines.append(f"- Decision threshold: {classes[1]} when P({classes[1]}) >= "
                         f"{calibration['threshold']:.3f} (balanced accuracy "
                         f"{calibration['threshold_balanced_accuracy']:.3f} out of fold, "
                         f"{calibration['argmax_balanced_accuracy']:.3f} at the most probable "
                         "class).")
    lines += ["", "## Intended use", "", INTENDED_USE, "", "## Known limits", ""]
    lines += [f"- {item}" for item in LIMITS]
    lines += ["", "## Exports", ""]
    lines += _exports(layout) or ["None yet (`lrmil export RUN`)."]
    versions = config.get("versions", {})
    lines += ["", "## Versions", "", "Trained with " + ", ".join(
        f"{k} {v}" for k, v in versions.items()) + "."]
    return "\n".join(lines) + "\n"


def _stage1(stage1: dict[str, Any]) -> str:
    if not stage1["enabled"]:
        return "off"
    return f"{stage1['mode']} mode, {stage1['epochs']} epochs"


def _exports(layout: RunLayout) -> list[str]:
    lines = []
    for folder in layout.exports():
        for sidecar in sorted(folder.glob("mil.*.json")):
            data = json.loads(sidecar.read_text())
            model = data.get("model", {})
            threshold = model.get("threshold")
            lines.append(
                f"- {folder.name}/{data['artifact']}: {model.get('model', '?')} model, "
                f"{data['format']} {data['precision']}, T = {model.get('temperature', 1.0):.3f}"
                + (f", threshold {threshold:.3f}" if threshold is not None else "")
                + f", artifact sha256 {data['artifact_sha256'][:16]}..., run digest "
                f"{(model.get('source_sha256') or '')[:16]}...")
    return lines


def write_model_card(run: Path) -> Path:
    layout = RunLayout(run)
    atomic_write_text(layout.model_card, model_card(Path(run)))
    return layout.model_card
