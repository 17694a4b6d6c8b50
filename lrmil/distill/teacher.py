"""Step 1: the HR teacher. Gated ABMIL on the HR features of all valid children, cross-entropy,
early stopping on validation AUC. Saves per slide its logits and per-HR-patch attention LOGITS
(pre-softmax, aligned with the rows of the HR features file)."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import torch

from lrmil.distill.checkpoint import save_mil
from lrmil.distill.cohort import Cohort
from lrmil.distill.config import DistillConfig
from lrmil.distill.predictions import write_predictions
from lrmil.distill.splits import Fold
from lrmil.distill.train import Progress, autocast, predict, train_mil
from lrmil.mil import Bag, GatedABMIL
from lrmil.utils.atomic import atomic_path

OUTPUTS = "teacher_outputs.h5"


def hr_bags(cohort: Cohort, names: list[str]) -> list[Bag]:
    return [Bag(n, cohort.slides[n].hr, cohort.slides[n].label) for n in names]


def train_teacher(cohort: Cohort, fold: Fold, cfg: DistillConfig, fold_dir: Path,
                  device: torch.device, seed: int, progress: Progress | None = None) -> None:
    """Writes `teacher.safetensors`, `teacher_outputs.h5` (every slide of the cohort) and
    `pred_teacher.csv` (the fold's test slides)."""
    torch.manual_seed(seed)
    dim = next(iter(cohort.slides.values())).hr.shape[1]
    model = GatedABMIL(dim, len(cohort.class_names), cfg.mil.hidden, cfg.mil.proj_dim,
                       dropout=cfg.mil.dropout)
    result = train_mil(model, hr_bags(cohort, fold.train), hr_bags(cohort, fold.val),
                       cfg.teacher, device, seed, progress=progress,
                       standardize=cfg.mil.standardize)
    write_teacher_outputs(model, cohort, fold_dir / OUTPUTS, device)
    probs, _ = predict(model, hr_bags(cohort, fold.test), device)
    write_predictions(fold_dir / "pred_teacher.csv", fold.test,
                      [cohort.slides[n].label for n in fold.test], probs, cohort.class_names)
    save_mil(model, fold_dir / "teacher.safetensors",
             {"best_epoch": result.best_epoch, "val_auc": result.best_val_auc})


@torch.no_grad()
def write_teacher_outputs(model: GatedABMIL, cohort: Cohort, path: Path,
                          device: torch.device) -> None:
    """`/<slide>/logits (C,)` and `/<slide>/attn_logits (M,)`, one bag at a time."""
    model.eval()
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as fh:
        for name in cohort.names:
            x = cohort.slides[name].hr.to(device)
            offsets = torch.tensor([0, x.shape[0]], device=device)
            with autocast(device):
                out = model(x, offsets)
            group = fh.create_group(name)
            group["logits"] = out.logits[0].float().cpu().numpy()
            group["attn_logits"] = out.attn_logits.float().cpu().numpy()


def read_teacher_outputs(path: Path) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """{slide: (logits (C,), attn_logits (M,))}."""
    with h5py.File(path, "r") as fh:
        return {name: (torch.from_numpy(np.asarray(g["logits"])),
                       torch.from_numpy(np.asarray(g["attn_logits"])))
                for name, g in fh.items()}
