"""The lower reference: LR gated ABMIL with cross-entropy only on the un-distilled LR features,
on the same folds and with the same budget as the student."""

from __future__ import annotations

import torch

from lrmil.distill.bags import feature_bags
from lrmil.distill.cohort import Cohort
from lrmil.distill.config import DistillConfig
from lrmil.distill.layout import FoldLayout
from lrmil.distill.splits import Fold
from lrmil.distill.train import Progress, build_mil, fit_and_save


def train_baseline(cohort: Cohort, fold: Fold, cfg: DistillConfig, out: FoldLayout,
                   device: torch.device, seed: int, progress: Progress | None = None) -> None:
    """Writes `baseline.safetensors` and `pred_baseline.csv`."""
    def bags(names: list[str]):
        return feature_bags(cohort, names, cohort.lr)

    fit_and_save(lambda: build_mil(cfg.mil, cohort.lr_dim, len(cohort.class_names)),
                 bags(fold.train), bags(fold.val), bags(fold.test), cfg.baseline,
                 out.model("baseline"), out.predictions("baseline"), cohort.class_names, device,
                 seed, progress=progress, standardize=cfg.mil.standardize)
