"""Step 3: the LR student. Gated ABMIL with an instance classifier on the stage-1 LR features,
trained with CE + logit KD + attention KD + top-k/bottom-k instance loss (method.md)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from lrmil.data.store import ArrayKey
from lrmil.distill.bags import BagSet, feature_bags
from lrmil.distill.cohort import Cohort
from lrmil.distill.config import DistillConfig, StudentConfig
from lrmil.distill.layout import FoldLayout
from lrmil.distill.losses import attention_kd, instance_loss, logit_kd, map_attention
from lrmil.distill.splits import Fold
from lrmil.distill.teacher import teacher_attn_logits, teacher_logits
from lrmil.distill.train import LossFn, Progress, build_mil, fit_and_save
from lrmil.mil import Bag, Batch, MILOutput, collate


@dataclass
class StudentBag(Bag):
    """An LR bag with what the student distils from its teacher."""

    teacher_logits: torch.Tensor | None = None  # (C,) the teacher's slide logits
    teacher_attn: torch.Tensor | None = None  # (N,) its HR attention logits mapped to LR patches


@dataclass
class StudentBatch(Batch):
    teacher_logits: torch.Tensor | None = None  # (B, C)
    teacher_attn: torch.Tensor | None = None  # (T,)


def collate_students(bags: Sequence[StudentBag]) -> StudentBatch:
    batch = collate(bags)
    return StudentBatch(batch.names, batch.x, batch.offsets, batch.labels,
                        torch.stack([b.teacher_logits for b in bags]),
                        torch.cat([b.teacher_attn for b in bags]))


def student_loss(kd: StudentConfig) -> LossFn:
    def loss(out: MILOutput, batch: StudentBatch) -> tuple[torch.Tensor, dict[str, float]]:
        parts = {"ce": F.cross_entropy(out.logits.float(), batch.labels)}
        if kd.lambda_bag > 0:
            parts["logit_kd"] = logit_kd(out.logits, batch.teacher_logits, kd.t_bag)
        if kd.lambda_soft > 0:
            parts["attn_kd"] = attention_kd(out.attn_logits, batch.teacher_attn, batch.offsets,
                                            kd.t_attn)
        if kd.lambda_hard > 0:
            parts["inst"] = instance_loss(out.inst_logits, batch.teacher_attn, batch.offsets,
                                          kd.topk)
        weights = {"ce": kd.lambda_ce, "logit_kd": kd.lambda_bag, "attn_kd": kd.lambda_soft,
                   "inst": kd.lambda_hard}
        total = sum(weights[k] * v for k, v in parts.items())
        return total, {k: float(v.detach()) for k, v in parts.items()}

    return loss


def student_bags(cohort: Cohort, names: list[str], features: Callable[[str], ArrayKey],
                 teacher_outputs: Path, attn_map: str) -> BagSet:
    """LR bags (`features(slide)`: the stage-1 or the raw LR features) with the teacher's slide
    logits and its HR attention logits mapped to LR patches."""
    def keys(name: str) -> list[ArrayKey]:
        return [features(name), teacher_logits(teacher_outputs, name),
                teacher_attn_logits(teacher_outputs, name), cohort.parent(name)]

    def make(name: str, label: int, values: list[np.ndarray]) -> StudentBag:
        x, logits, hr_attn, parent = values
        g = map_attention(torch.from_numpy(hr_attn), torch.from_numpy(parent), len(x), attn_map)
        return StudentBag(name, torch.from_numpy(x), label, torch.from_numpy(logits), g)

    return BagSet(cohort.store, list(names), [cohort.slides[n].label for n in names], keys, make,
                  collate_students)


def train_student(cohort: Cohort, fold: Fold, cfg: DistillConfig, kd: StudentConfig,
                  features: Callable[[str], ArrayKey], in_dim: int, out: FoldLayout, name: str,
                  device: torch.device, seed: int, progress: Progress | None = None) -> None:
    """Writes `<name>.safetensors` and `pred_<name>.csv` (the fold's test slides)."""
    def bags(names: list[str]) -> BagSet:
        return student_bags(cohort, names, features, out.teacher_outputs, kd.attn_map)

    fit_and_save(lambda: build_mil(cfg.mil, in_dim, len(cohort.class_names), instance_head=True),
                 bags(fold.train), bags(fold.val), feature_bags(cohort, fold.test, features),
                 cfg.student, out.model(name), out.predictions(name), cohort.class_names, device,
                 seed, loss_fn=student_loss(kd), progress=progress,
                 standardize=cfg.mil.standardize)
