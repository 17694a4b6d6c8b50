"""Step 3: the LR student. Gated ABMIL with an instance classifier on the stage-1 LR features,
trained with CE + logit KD + attention KD + top-k/bottom-k instance loss (method.md)."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from lrmil.distill.checkpoint import save_mil
from lrmil.distill.cohort import Cohort
from lrmil.distill.config import DistillConfig, StudentConfig
from lrmil.distill.losses import attention_kd, instance_loss, logit_kd, map_attention
from lrmil.distill.predictions import write_predictions
from lrmil.distill.splits import Fold
from lrmil.distill.train import LossFn, Progress, predict, train_mil
from lrmil.mil import Bag, Batch, GatedABMIL, MILOutput


def student_loss(kd: StudentConfig) -> LossFn:
    def loss(out: MILOutput, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
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


def student_bags(cohort: Cohort, names: list[str], features: dict[str, torch.Tensor],
                 teacher: dict[str, tuple[torch.Tensor, torch.Tensor]], attn_map: str
                 ) -> list[Bag]:
    """LR bags with the teacher's slide logits and its HR attention logits mapped to LR."""
    bags = []
    for name in names:
        slide = cohort.slides[name]
        logits, hr_attn = teacher[name]
        g = map_attention(hr_attn, slide.parent, slide.lr.shape[0], attn_map)
        bags.append(Bag(name, features[name], slide.label, logits, g))
    return bags


def train_student(cohort: Cohort, fold: Fold, cfg: DistillConfig, kd: StudentConfig,
                  features: dict[str, torch.Tensor],
                  teacher: dict[str, tuple[torch.Tensor, torch.Tensor]], fold_dir: Path,
                  name: str, device: torch.device, seed: int,
                  progress: Progress | None = None) -> None:
    """Writes `<name>.safetensors` and `pred_<name>.csv` (the fold's test slides)."""
    torch.manual_seed(seed)
    dim = next(iter(features.values())).shape[1]
    model = GatedABMIL(dim, len(cohort.class_names), cfg.mil.hidden, cfg.mil.proj_dim,
                       instance_head=True, dropout=cfg.mil.dropout)
    result = train_mil(
        model, student_bags(cohort, fold.train, features, teacher, kd.attn_map),
        student_bags(cohort, fold.val, features, teacher, kd.attn_map), cfg.student, device,
        seed, loss_fn=student_loss(kd), progress=progress, standardize=cfg.mil.standardize)
    test = [Bag(n, features[n], cohort.slides[n].label) for n in fold.test]
    probs, _ = predict(model, test, device)
    write_predictions(fold_dir / f"pred_{name}.csv", fold.test, [b.label for b in test], probs,
                      cohort.class_names)
    save_mil(model, fold_dir / f"{name}.safetensors",
             {"best_epoch": result.best_epoch, "val_auc": result.best_val_auc})
