"""The deployable model: after the folds, teacher, stage 1 and student are trained again on every
labelled slide, in RUN/final/ (the folds only estimate how well this recipe does).

There is no validation set left to stop on, so each MIL model trains for a fixed number of
epochs: the median of the best (early-stopped) epochs of that model over the folds, recorded
with where it came from in RUN/final/training.json. Stage 1 has no early stopping and keeps its
configured epochs. Like the folds, each step is skipped when its file exists (the weights are
written last) and seeds itself from (seed, step), so a resumed run gives the same model.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lrmil.distill.checkpoint import load_meta
from lrmil.distill.cohort import Cohort
from lrmil.distill.config import DistillConfig
from lrmil.distill.layout import RunLayout
from lrmil.distill.splits import Fold
from lrmil.distill.stage1 import SlideGeometry, run_stage1, stage1_features, stage1_slides
from lrmil.distill.student import train_student
from lrmil.distill.teacher import train_teacher
from lrmil.distill.train import Progress
from lrmil.errors import FileFormatError
from lrmil.utils.atomic import atomic_write_text

FINAL_FOLD = 0  # the index the final model's seeds and files use (folds count from 1)
EPOCH_MODELS = ("teacher", "student")  # the early-stopped models the final one retrains


def median_epoch(epochs: list[int]) -> int:
    """The median, an even count's halfway value rounded up (a model is rather trained a
    little longer than stopped before its best)."""
    return int(math.ceil(float(np.median(epochs))))


def final_epochs(layout: RunLayout, folds: list[int]) -> dict[str, dict[str, Any]]:
    """{model: {"epochs": median best epoch, "fold_best_epochs": {fold: epoch}}}, read from
    the fold models' checkpoints."""
    plan = {}
    for model in EPOCH_MODELS:
        best = {}
        for k in folds:
            meta = load_meta(layout.fold(k).model(model))
            if "best_epoch" not in meta:
                raise FileFormatError(f"{layout.fold(k).model(model)} does not record its best "
                                      "epoch; re-run `lrmil distill` in a new --out")
            best[str(k)] = int(meta["best_epoch"])
        plan[model] = {"epochs": median_epoch(list(best.values())), "fold_best_epochs": best}
    return plan


def final_config(cfg: DistillConfig, plan: dict[str, dict[str, Any]]) -> DistillConfig:
    """`cfg` with the teacher's and student's epochs from `plan`."""
    return dataclasses.replace(
        cfg, teacher=dataclasses.replace(cfg.teacher, epochs=plan["teacher"]["epochs"]),
        student=dataclasses.replace(cfg.student, epochs=plan["student"]["epochs"]))


StepHook = Callable[[str], Any]  # as lrmil.distill.run.StepHook


def train_final(cfg: DistillConfig, cohort: Cohort, layout: RunLayout, folds: list[int],
                device: torch.device, geometry: SlideGeometry | None, hook: StepHook,
                seed_of: Callable[[str], int]) -> None:
    """Train RUN/final/{teacher, stage1_*, student}.safetensors on every labelled slide
    (`seed_of(step)`: the step's seed) and write RUN/final/training.json first."""
    out = layout.final
    if out.model("student").exists():
        return
    plan = final_epochs(layout, folds)
    final_cfg = final_config(cfg, plan)
    out.dir.mkdir(parents=True, exist_ok=True)
    record = {"slides": len(cohort.names), "patients": cohort.summary()["patients"],
              "counts": cohort.counts(), "stage1": {
                  "enabled": cfg.stage1.enabled, "mode": cfg.stage1.mode,
                  "epochs": cfg.stage1.epochs},
              "epochs": {m: plan[m]["epochs"] for m in EPOCH_MODELS},
              "fold_best_epochs": {m: plan[m]["fold_best_epochs"] for m in EPOCH_MODELS},
              "rule": "median of the folds' best (early-stopped) epochs, halves rounded up; "
                      "no validation set, the last epoch is the model"}
    atomic_write_text(layout.final_training, json.dumps(record, indent=2) + "\n")
    everything = Fold(FINAL_FOLD, list(cohort.names), [], [])

    def once(name: str, done: Path, work: Callable[[Progress | None], None]) -> None:
        if not done.exists():
            with hook(f"final model: {name}") as tick:
                work(tick)

    once("teacher", out.model("teacher"),
         lambda tick: train_teacher(cohort, everything, final_cfg, out, device,
                                    seed_of("teacher"), tick))
    features = cohort.lr
    if cfg.stage1.enabled:
        once(f"stage 1 ({cfg.stage1.mode})", out.stage1_features,
             lambda _tick: run_stage1(cohort, stage1_slides(cohort, everything,
                                                            cfg.stage1.slides),
                                      final_cfg, out, device, seed_of("stage1"), geometry))

        def features(name: str) -> tuple[str, str]:
            return stage1_features(out, name)

    path, dataset = features(cohort.names[0])
    width = int(cohort.store.inspect(path).shapes[dataset][-1])
    once("student", out.model("student"),
         lambda tick: train_student(cohort, everything, final_cfg, final_cfg.kd, features, width,
                                    out, "student", device, seed_of("student"), tick))
    for done in (out.teacher_outputs, out.stage1_features):
        cohort.store.forget(done)


def read_training(layout: RunLayout) -> dict[str, Any] | None:
    """RUN/final/training.json, or None for a run without a final model."""
    path = layout.final_training
    return json.loads(path.read_text()) if path.is_file() else None

