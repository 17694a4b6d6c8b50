"""The lower reference: LR gated ABMIL with cross-entropy only on the un-distilled LR features,
on the same folds and with the same budget as the student."""

from __future__ import annotations

from pathlib import Path

import torch

from lrmil.distill.checkpoint import save_mil
from lrmil.distill.cohort import Cohort
from lrmil.distill.config import DistillConfig
from lrmil.distill.predictions import write_predictions
from lrmil.distill.splits import Fold
from lrmil.distill.train import Progress, predict, train_mil
from lrmil.mil import Bag, GatedABMIL


def train_baseline(cohort: Cohort, fold: Fold, cfg: DistillConfig, fold_dir: Path,
                   device: torch.device, seed: int, progress: Progress | None = None) -> None:
    """Writes `baseline.safetensors` and `pred_baseline.csv`."""
    def bags(names: list[str]) -> list[Bag]:
        return [Bag(n, cohort.slides[n].lr, cohort.slides[n].label) for n in names]

    torch.manual_seed(seed)
    dim = next(iter(cohort.slides.values())).lr.shape[1]
    model = GatedABMIL(dim, len(cohort.class_names), cfg.mil.hidden, cfg.mil.proj_dim,
                       dropout=cfg.mil.dropout)
    result = train_mil(model, bags(fold.train), bags(fold.val), cfg.baseline, device, seed,
                       progress=progress, standardize=cfg.mil.standardize)
    probs, _ = predict(model, bags(fold.test), device)
    write_predictions(fold_dir / "pred_baseline.csv", fold.test,
                      [cohort.slides[n].label for n in fold.test], probs, cohort.class_names)
    save_mil(model, fold_dir / "baseline.safetensors",
             {"best_epoch": result.best_epoch, "val_auc": result.best_val_auc})
