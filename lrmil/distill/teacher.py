"""Step 1: the HR teacher. Gated ABMIL on the HR features of all valid children, cross-entropy,
early stopping on validation AUC. Saves per slide its logits and per-HR-patch attention LOGITS
(pre-softmax, aligned with the rows of the HR features file)."""

from __future__ import annotations

from pathlib import Path

import h5py
import torch

from lrmil.data.store import ArrayKey
from lrmil.distill.bags import BagSet, feature_bags
from lrmil.distill.cohort import Cohort
from lrmil.distill.config import DistillConfig
from lrmil.distill.layout import FoldLayout
from lrmil.distill.splits import Fold
from lrmil.distill.train import Progress, autocast, build_mil, fit_and_save
from lrmil.mil import GatedABMIL
from lrmil.utils.atomic import atomic_path


def hr_bags(cohort: Cohort, names: list[str]) -> BagSet:
    return feature_bags(cohort, names, cohort.hr)


def train_teacher(cohort: Cohort, fold: Fold, cfg: DistillConfig, out: FoldLayout,
                  device: torch.device, seed: int, progress: Progress | None = None) -> None:
    """Writes `teacher.safetensors`, `teacher_outputs.h5` (every slide of the cohort, the
    unlabelled ones too: stage 1's weights) and `pred_teacher.csv` (the fold's test slides)."""
    fit_and_save(
        lambda: build_mil(cfg.mil, cohort.hr_dim, len(cohort.class_names)),
        hr_bags(cohort, fold.train), hr_bags(cohort, fold.val), hr_bags(cohort, fold.test),
        cfg.teacher, out.model("teacher"), out.predictions("teacher"), cohort.class_names,
        device, seed, progress=progress, standardize=cfg.mil.standardize,
        before_save=lambda model: write_teacher_outputs(model, cohort, out.teacher_outputs,
                                                        device))


@torch.no_grad()
def write_teacher_outputs(model: GatedABMIL, cohort: Cohort, path: Path,
                          device: torch.device) -> None:
    """`/<slide>/logits (C,)` and `/<slide>/attn_logits (M,)`, one bag at a time."""
    model.eval()
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as fh:
        for bag in hr_bags(cohort, [*cohort.names, *cohort.unlabelled_names]).bags():
            x = bag.features.to(device, torch.float32)
            offsets = torch.tensor([0, x.shape[0]], device=device)
            with autocast(device):
                out = model(x, offsets)
            group = fh.create_group(bag.name)
            group["logits"] = out.logits[0].float().cpu().numpy()
            group["attn_logits"] = out.attn_logits.float().cpu().numpy()
    cohort.store.forget(path)  # a re-run of the step replaces it


def teacher_logits(path: Path, slide: str) -> ArrayKey:
    """Where a slide's teacher slide logits (C,) are in `teacher_outputs.h5`."""
    return (str(path), f"{slide}/logits")


def teacher_attn_logits(path: Path, slide: str) -> ArrayKey:
    """... and its attention logits over its HR rows (M,)."""
    return (str(path), f"{slide}/attn_logits")
