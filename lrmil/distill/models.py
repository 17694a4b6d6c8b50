"""The trained students of a run, for export and inference: the final model (RUN/final, the
default) or one fold's."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import torch

from lrmil.distill.checkpoint import load_meta, load_mil, load_state
from lrmil.distill.config import DistillConfig, from_dict
from lrmil.distill.layout import FoldLayout, RunLayout
from lrmil.distill.stage1 import load_adapter
from lrmil.errors import FileFormatError


def student_layout(layout: RunLayout, fold: int | None) -> FoldLayout:
    """Where the student is: RUN/final (fold None) or RUN/fold_<k>, refusing a missing one."""
    out = layout.final if fold is None else layout.fold(fold)
    if not out.model("student").is_file():
        if fold is None:
            raise FileFormatError(
                f"{layout.root} has no final model ({out.model('student')}); re-run "
                "`lrmil distill` with the same settings to train it (the folds are kept), or "
                "pick a fold's student with --fold K")
        folds = [f.index for f in layout.folds() if f.model("student").is_file()]
        raise FileFormatError(f"{layout.root} has no student for fold {fold}; folds with one: "
                              f"{folds or 'none'}")
    return out


def load_student(run: str | Path, fold: int | None = None):
    """(encoder, student MIL, config dict) of the final model (`fold=None`) or of fold `fold`.

    The encoder is the stage-1 one: the distilled LR encoder (`encoder` mode), or the built LR
    encoder followed by the adapter (`adapter` mode, `encoder.model` is Sequential(encoder,
    adapter))."""
    from lrmil.encoders import build

    layout = RunLayout(Path(run))
    if not layout.config.is_file():
        raise FileFormatError(f"{layout.root} is not an lrmil distill run (no config.json)")
    config = json.loads(layout.config.read_text())
    cfg = from_dict({k: v for k, v in config.items() if k in DistillConfig.__dataclass_fields__})
    out = student_layout(layout, fold)
    mil, _ = load_mil(out.model("student"))
    enc = config["encoder"]
    encoder = build(enc["lr"], cfg.stage1.encoder_weights, seed=int(enc.get("seed", 0)))
    if cfg.stage1.enabled and cfg.stage1.mode == "encoder":
        state, _ = load_state(out.stage1_model("encoder"))
        encoder.model.load_state_dict(state)
    elif cfg.stage1.enabled:
        adapter = load_adapter(out.stage1_model("adapter"))
        encoder = dataclasses.replace(encoder, model=torch.nn.Sequential(encoder.model, adapter),
                                      dim=adapter.feature_dim)
    encoder.model.eval()
    return encoder, mil, config


def best_fold(run: str | Path) -> int:
    """The fold whose student had the best validation AUC (the benchmark compares it)."""
    layout = RunLayout(Path(run))
    scores: dict[int, float] = {}
    for fold in layout.folds():
        if fold.model("student").is_file():
            meta = load_meta(fold.model("student"))
            scores[fold.index] = float(meta.get("val_auc", float("-inf")))
    if not scores:
        raise FileFormatError(f"run {layout.root} has no trained fold student "
                              "(fold_*/student.safetensors)")
    return max(sorted(scores), key=lambda k: scores[k])


def fold_students(run: str | Path) -> list[int]:
    """The folds that have a trained student, by index."""
    return [f.index for f in RunLayout(Path(run)).folds() if f.model("student").is_file()]


def stage1_sharing(config: dict[str, Any]) -> str:
    """How the fold students' encoders relate: "none" (no stage 1: one LR encoder for all),
    "adapter" (one LR encoder, a small adapter per fold) or "encoder" (a distilled LR encoder
    per fold: an ensemble runs each)."""
    stage1 = config.get("stage1", {})
    if not stage1.get("enabled", True):
        return "none"
    return str(stage1.get("mode", "encoder"))
