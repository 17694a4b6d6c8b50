"""The student's distillation losses over packed bags, and the HR -> LR attention mapping.

Bags are packed: instances of B bags in one (T, ...) tensor with `offsets` (B+1,). Segment
reductions replace per-bag padding, so the losses cost O(T) whatever the bag sizes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def map_attention(hr_logits: torch.Tensor, parent: torch.Tensor, n_lr: int,
                  how: str = "mean") -> torch.Tensor:
    """g_i = mean (or max) of the teacher's HR attention logits over the children of LR patch i.

    LR patches with no valid child get -inf: zero teacher attention, never a top-k patch.
    """
    parent = parent.to(torch.int64)
    hr_logits = hr_logits.to(torch.float32)
    if how == "max":
        out = hr_logits.new_full((n_lr,), float("-inf"))
        return out.scatter_reduce(0, parent, hr_logits, reduce="amax", include_self=True)
    if how != "mean":
        raise ValueError(f"attention mapping must be 'mean' or 'max', got {how!r}")
    total = hr_logits.new_zeros(n_lr).index_add(0, parent, hr_logits)
    count = hr_logits.new_zeros(n_lr).index_add(0, parent, torch.ones_like(hr_logits))
    return torch.where(count > 0, total / count.clamp_min(1), torch.full_like(total, float("-inf")))


def bag_index(offsets: torch.Tensor, total: int) -> torch.Tensor:
    """The bag of every packed instance, (T,) int64."""
    lengths = offsets[1:] - offsets[:-1]
    return torch.repeat_interleave(torch.arange(len(lengths), device=offsets.device), lengths,
                                   output_size=total)


def segment_log_softmax(x: torch.Tensor, bag: torch.Tensor, n_bags: int) -> torch.Tensor:
    """log softmax within each bag; -inf entries stay -inf (zero probability)."""
    bag_max = x.new_full((n_bags,), float("-inf")).scatter_reduce(0, bag, x, reduce="amax",
                                                                  include_self=True)
    bag_max = torch.where(torch.isfinite(bag_max), bag_max, torch.zeros_like(bag_max)).detach()
    shifted = x - bag_max[bag]
    sums = x.new_zeros(n_bags).index_add(0, bag, torch.exp(shifted))
    return shifted - torch.log(sums)[bag]


def logit_kd(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """T^2 KL(softmax(z_T/T) || softmax(z_S/T)), averaged over bags."""
    t = temperature
    log_p = F.log_softmax(teacher.float() / t, dim=1)
    log_q = F.log_softmax(student.float() / t, dim=1)
    return t * t * F.kl_div(log_q, log_p, reduction="batchmean", log_target=True)


def attention_kd(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                 offsets: torch.Tensor, temperature: float) -> torch.Tensor:
    """T^2 KL(softmax_i(g_i/T) || softmax_i(e_i/T)) per bag, averaged over the bags that have
    teacher attention (bags whose g is all -inf are skipped)."""
    t = temperature
    n_bags = offsets.shape[0] - 1
    bag = bag_index(offsets, student_logits.shape[0])
    log_p = segment_log_softmax(teacher_logits.float() / t, bag, n_bags)
    log_q = segment_log_softmax(student_logits.float() / t, bag, n_bags)
    p = torch.exp(log_p)
    # p = 0 terms contribute 0 (avoid 0 * -inf).
    terms = torch.where(p > 0, p * (log_p - log_q), torch.zeros_like(p))
    per_bag = terms.new_zeros(n_bags).index_add(0, bag, terms)
    has_teacher = torch.zeros(n_bags, dtype=torch.bool, device=p.device)
    has_teacher = has_teacher.index_fill(0, bag[torch.isfinite(teacher_logits)], True)
    if not bool(has_teacher.any()):
        return student_logits.sum() * 0.0
    return t * t * per_bag[has_teacher].mean()


def topk_instances(teacher_logits: torch.Tensor, offsets: torch.Tensor,
                   k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices (into the packed instances) and 0/1 labels of the top-k (1) and bottom-k (0)
    patches of every bag by g, with k capped at N // 2 over the patches that have a finite g."""
    index, labels = [], []
    bounds = offsets.tolist()
    for start, end in zip(bounds[:-1], bounds[1:], strict=True):
        g = teacher_logits[start:end]
        finite = torch.nonzero(torch.isfinite(g)).flatten()
        kk = min(k, finite.numel() // 2)
        if kk == 0:
            continue
        order = finite[torch.argsort(g[finite], descending=True)] + start
        index += [order[:kk], order[-kk:]]
        labels += [torch.ones(kk, dtype=torch.int64), torch.zeros(kk, dtype=torch.int64)]
    if not index:
        empty = torch.zeros(0, dtype=torch.int64, device=teacher_logits.device)
        return empty, empty
    return torch.cat(index), torch.cat(labels).to(teacher_logits.device)


def instance_loss(inst_logits: torch.Tensor, teacher_logits: torch.Tensor,
                  offsets: torch.Tensor, k: int) -> torch.Tensor:
    """CE of the instance classifier on each bag's top-k (label 1) and bottom-k (label 0)."""
    index, labels = topk_instances(teacher_logits, offsets, k)
    if index.numel() == 0:
        return inst_logits.sum() * 0.0
    return F.cross_entropy(inst_logits[index].float(), labels)
