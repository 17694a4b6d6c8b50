"""The training loop shared by teacher, baseline and student: packed batches of bags, AdamW with
a cosine schedule, gradient clipping, early stopping on validation AUC, bf16 autocast on CUDA;
and the recipe each of them follows (`fit_and_save`)."""

from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from lrmil.distill.bags import BagSet
from lrmil.distill.checkpoint import save_mil
from lrmil.distill.config import MILConfig, TrainConfig
from lrmil.distill.metrics import auc
from lrmil.distill.predictions import write_predictions
from lrmil.mil import Batch, GatedABMIL, MILOutput

# (model output, batch) -> (loss, named parts for the log)
LossFn = Callable[[MILOutput, Batch], tuple[torch.Tensor, dict[str, float]]]
Progress = Callable[[int, dict[str, float]], None]  # (epoch, stats) after every epoch


def ce_loss(out: MILOutput, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
    loss = F.cross_entropy(out.logits.float(), batch.labels)
    return loss, {"ce": float(loss.detach())}


@dataclass
class TrainResult:
    best_epoch: int
    best_val_auc: float
    history: list[dict[str, float]] = field(default_factory=list)  # per epoch: loss, val_auc


def autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA; full precision on the CPU (bf16 there is slower, not faster)."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


@torch.no_grad()
def predict(model: GatedABMIL, bags: BagSet, device: torch.device,
            batch_bags: int) -> tuple[np.ndarray, list[torch.Tensor]]:
    """Class logits (N, C) and each bag's attention logits, in the order of `bags`, packed
    `batch_bags` at a time: the training batch's size, so that predicting never needs more
    memory than a training step (bench/results/memory.md)."""
    model.eval()
    logits, attn = [], []
    for batch in bags.batches(batch_bags):
        batch = batch.to(device)
        with autocast(device):
            out = model(batch.x, batch.offsets)
        logits.append(out.logits.float().cpu())
        bounds = batch.offsets.tolist()
        attn_logits = out.attn_logits.float().cpu()
        attn += [attn_logits[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
    return torch.cat(logits).numpy(), attn


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


def _val_score(model: GatedABMIL, bags: BagSet, device: torch.device,
               batch_bags: int) -> tuple[float, float]:
    logits, _ = predict(model, bags, device, batch_bags)
    probs = softmax(logits)
    labels = np.array(bags.labels)
    nll = float(-np.log(np.clip(probs[np.arange(len(labels)), labels], 1e-12, None)).mean())
    return auc(labels, probs), nll


def train_mil(model: GatedABMIL, train: BagSet, val: BagSet, cfg: TrainConfig,
              device: torch.device, seed: int, loss_fn: LossFn = ce_loss,
              progress: Progress | None = None, standardize: bool = True) -> TrainResult:
    """Train in place and leave the model at its best validation epoch (AUC, then lower NLL:
    AUC alone saturates on easy data and would keep an under-trained early epoch); with an
    empty `val` (the final model), exactly `cfg.epochs` epochs, the last kept.
    `standardize`: first set the model's input statistics from the training instances."""
    if standardize:
        model.set_input_stats(train.input_stats())
    torch.manual_seed(seed)  # dropout
    generator = torch.Generator().manual_seed(seed)
    model.to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps = cfg.epochs * math.ceil(len(train) / cfg.batch_bags)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(steps, 1))
    best: tuple[float, float] | None = None
    best_state, best_epoch, stale = None, 0, 0
    history = []
    for epoch in range(1, cfg.epochs + 1):
        model.train()
        total, count = 0.0, 0
        for batch in train.batches(cfg.batch_bags, generator):
            batch = batch.to(device)
            with autocast(device):
                out = model(batch.x, batch.offsets)
            loss, _ = loss_fn(out, batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            optimizer.step()
            schedule.step()
            total += float(loss.detach()) * len(batch.names)
            count += len(batch.names)
        val_auc, val_nll = (_val_score(model, val, device, cfg.batch_bags) if len(val)
                            else (math.nan, math.nan))
        stats = {"epoch": epoch, "loss": total / max(count, 1), "val_auc": val_auc,
                 "val_nll": val_nll}
        history.append(stats)
        if progress is not None:
            progress(epoch, stats)
        if not len(val):
            best_epoch, best_state = epoch, None  # the model as it ends is the result
            continue
        score = (-math.inf if math.isnan(val_auc) else val_auc, -val_nll)
        # Until min_epochs the latest epoch is kept: an early lucky AUC on a small validation
        # set would otherwise keep a barely trained model.
        if epoch <= cfg.min_epochs or best is None or score > best:
            best, best_epoch, stale = score, epoch, 0
            best_state = copy.deepcopy(model.state_dict())
        else:
            stale += 1
            if stale >= cfg.patience:
                break
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return TrainResult(best_epoch, best[0] if best else math.nan, history)


def build_mil(cfg: MILConfig, in_dim: int, n_classes: int, instance_head: bool = False
              ) -> GatedABMIL:
    return GatedABMIL(in_dim, n_classes, cfg.hidden, cfg.proj_dim, instance_head=instance_head,
                      dropout=cfg.dropout)


def fit_and_save(build: Callable[[], GatedABMIL], train: BagSet, val: BagSet, test: BagSet,
                 cfg: TrainConfig, weights: Path, predictions: Path, class_names: list[str],
                 device: torch.device, seed: int, loss_fn: LossFn = ce_loss,
                 progress: Progress | None = None, standardize: bool = True,
                 before_save: Callable[[GatedABMIL], None] | None = None) -> GatedABMIL:
    """The recipe of every MIL model of a fold: build it from `seed`, train (early stopping on
    `val`), write the test slides' predictions (none for the final model: no test slides), run
    `before_save` (the teacher's outputs), and save the weights last: their file marks the step
    done for a resumed run."""
    torch.manual_seed(seed)
    model = build()
    result = train_mil(model, train, val, cfg, device, seed, loss_fn=loss_fn, progress=progress,
                       standardize=standardize)
    if len(test):
        logits, _ = predict(model, test, device, cfg.batch_bags)
        write_predictions(predictions, test.names, test.labels, logits, class_names)
    if before_save is not None:
        before_save(model)
    save_mil(model, weights, {"best_epoch": result.best_epoch, "val_auc": result.best_val_auc})
    return model
