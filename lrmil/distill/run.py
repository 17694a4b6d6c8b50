"""`run(cfg)`: every step over every fold, then the report; and `load_student` for export and
inference.

Each step is skipped when its outputs exist (the model's safetensors file is written last), so
an interrupted run resumes where it stopped. Every step seeds itself from (seed, fold, step),
so a resumed run gives the same models as an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from lrmil.distill.baseline import train_baseline
from lrmil.distill.checkpoint import load_mil, load_state
from lrmil.distill.cohort import Cohort, load_cohort
from lrmil.distill.config import DistillConfig, from_dict, save_config
from lrmil.distill.report import build_report, write_report
from lrmil.distill.splits import Fold, check_splits, make_splits, read_splits, write_splits
from lrmil.distill.stage1 import FEATURES, load_adapter, read_stage1_features, run_stage1
from lrmil.distill.student import train_student
from lrmil.distill.teacher import OUTPUTS, read_teacher_outputs, train_teacher
from lrmil.distill.train import Progress, resolve_device
from lrmil.errors import ConfigError, FileFormatError

# Settings that may change between a run and its resumption without changing any result.
RESUMABLE_CHANGES = {"out", "device", "ablations", "stage1.read_workers", "features", "labels",
                     "tiled", "splits_csv"}

# Entered around every step that runs, with the step's description; what it yields is called
# after every training epoch with (epoch, stats) (the CLI's progress display).
StepHook = Callable[[str], contextlib.AbstractContextManager[Progress | None]]


def seed_for(seed: int, fold: int, step: str) -> int:
    """A stable per-(seed, fold, step) seed, independent of which steps already ran."""
    return (seed * 1_000_003 + fold * 7919 + zlib.crc32(step.encode())) % (2**31)


def run(cfg: DistillConfig, on_step: StepHook | None = None) -> dict[str, Any]:
    """Train teacher, stage 1, student, baseline and the ablations on every fold; write the
    report (metrics.json, report.md, roc.png) and return it. `on_step(description)` is entered
    around each step that runs (the CLI shows progress with it)."""
    cfg.validate()
    hook = on_step or (lambda _desc: contextlib.nullcontext())
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    cohort = load_cohort(Path(cfg.features), Path(cfg.labels))
    _write_or_check_config(cfg, cohort, out)
    folds = _splits(cfg, cohort, out)
    device = resolve_device(cfg.device)

    models = ["teacher", "baseline", "student", *(f"student_{a}" for a in cfg.ablations)]
    for fold in folds:
        fold_dir = out / f"fold_{fold.index}"
        fold_dir.mkdir(exist_ok=True)
        for step in _fold_steps(cfg, cohort, fold, fold_dir, device):
            step(hook)
    report = build_report(out, [f.index for f in folds], models, cohort.class_names,
                          {"mode": cfg.stage1.mode if cfg.stage1.enabled else "none"})
    write_report(out, report)
    return report


def _fold_steps(cfg: DistillConfig, cohort: Cohort, fold: Fold, fold_dir: Path,
                device: torch.device) -> Iterator[Callable[[StepHook], None]]:
    k = fold.index

    def once(name: str, done: Path, work: Callable[[Progress | None], None]
             ) -> Callable[[StepHook], None]:
        def step(hook: StepHook) -> None:
            if not done.exists():
                with hook(f"fold {k}: {name}") as tick:
                    work(tick)
        return step

    yield once("teacher", fold_dir / "teacher.safetensors",
               lambda tick: train_teacher(cohort, fold, cfg, fold_dir, device,
                                          seed_for(cfg.seed, k, "teacher"), tick))

    def teacher() -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        return read_teacher_outputs(fold_dir / OUTPUTS)

    if cfg.stage1.enabled:
        yield once(f"stage 1 ({cfg.stage1.mode})", fold_dir / FEATURES,
                   lambda _tick: run_stage1(cohort, fold.train, teacher(), cfg, fold_dir, device,
                                      seed_for(cfg.seed, k, "stage1")))
    raw = {n: s.lr for n, s in cohort.slides.items()}

    def features() -> dict[str, torch.Tensor]:
        return read_stage1_features(fold_dir) if cfg.stage1.enabled else raw

    variants = {"student": (cfg.kd, features)}
    if "no_stage1" in cfg.ablations:
        variants["student_no_stage1"] = (cfg.kd, lambda: raw)
    if "no_attn_kd" in cfg.ablations:
        variants["student_no_attn_kd"] = (dataclasses.replace(cfg.kd, lambda_soft=0.0), features)
    if "no_logit_kd" in cfg.ablations:
        variants["student_no_logit_kd"] = (dataclasses.replace(cfg.kd, lambda_bag=0.0), features)
    for name, (kd, feats) in variants.items():
        yield once(name, fold_dir / f"{name}.safetensors",
                   lambda tick, name=name, kd=kd, feats=feats: train_student(
                       cohort, fold, cfg, kd, feats(), teacher(), fold_dir, name, device,
                       seed_for(cfg.seed, k, "student"), tick))
    yield once("baseline", fold_dir / "baseline.safetensors",
               lambda tick: train_baseline(cohort, fold, cfg, fold_dir, device,
                                           seed_for(cfg.seed, k, "baseline"), tick))


def _flat(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat = {}
    for key, value in data.items():
        if isinstance(value, dict):
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _write_or_check_config(cfg: DistillConfig, cohort: Cohort, out: Path) -> None:
    from lrmil.info import versions

    path = out / "config.json"
    if path.exists():
        saved = json.loads(path.read_text())
        old = _flat({k: v for k, v in saved.items() if k in cfg.to_dict()})
        new = _flat(cfg.to_dict())
        changed = sorted(k for k in new if k not in RESUMABLE_CHANGES and old.get(k) != new[k])
        if changed:
            raise ConfigError(f"run folder {out} was made with other settings ({', '.join(changed)}"
                              f"); use a new --out or the same settings to resume")
    extra = {"versions": versions(), "class_names": cohort.class_names,
             "encoder": {"lr": cohort.lr_encoder, "hr": cohort.hr_encoder,
                         "seed": cohort.encoder_seed}, "r": cohort.r, **_geometry(cfg, cohort)}
    save_config(cfg, path, extra)


def _geometry(cfg: DistillConfig, cohort: Cohort) -> dict[str, Any]:
    """What inference needs to tile and read slides as training did, where the files say it."""
    from lrmil.tiling import read_coords

    attrs, out = cohort.lr_attrs, {}
    if "patch_size" in attrs:
        out["patch_size"] = int(attrs["patch_size"])
    if "magnification" in attrs:
        out["lr_magnification"] = float(attrs["magnification"])
    first = cohort.slides[cohort.names[0]]
    coords = Path(cfg.tiled) / "coords" / f"{first.name}.h5" if cfg.tiled else first.coords_path
    if coords is not None and Path(coords).is_file():
        out["tiling"] = read_coords(coords).config.to_dict()
    return out


def _splits(cfg: DistillConfig, cohort: Cohort, out: Path) -> list[Fold]:
    path = out / "splits.csv"
    if path.exists():
        folds = read_splits(path, set(cohort.slides))
    elif cfg.splits_csv:
        folds = read_splits(Path(cfg.splits_csv), set(cohort.slides))
    else:
        names = cohort.names
        folds = make_splits(names, [cohort.slides[n].label for n in names],
                            [cohort.slides[n].patient for n in names], cfg.folds, cfg.seed,
                            cfg.val_fraction)
    check_splits(folds, cohort.label_of(), cohort.class_names)
    write_splits(folds, path)
    return folds


def load_student(run: str | Path, fold: int | None = None):
    """(encoder, student MIL, config dict) of a run, for export and inference.

    The encoder is the stage-1 one: the distilled LR encoder (`encoder` mode), or the built LR
    encoder followed by the adapter (`adapter` mode, `encoder.model` includes it). `fold=None`
    picks the fold whose student had the best validation AUC."""
    from lrmil.encoders import build

    run = Path(run)
    path = run / "config.json"
    if not path.is_file():
        raise FileFormatError(f"{run} is not an lrmil distill run (no config.json)")
    config = json.loads(path.read_text())
    cfg = from_dict({k: v for k, v in config.items() if k in DistillConfig.__dataclass_fields__})
    if fold is None:
        fold = _best_fold(run)
    fold_dir = run / f"fold_{fold}"
    mil, _ = load_mil(fold_dir / "student.safetensors")
    enc = config["encoder"]
    encoder = build(enc["lr"], cfg.stage1.encoder_weights, seed=int(enc.get("seed", 0)))
    if cfg.stage1.enabled and cfg.stage1.mode == "encoder":
        state, _ = load_state(fold_dir / "stage1_encoder.safetensors")
        encoder.model.load_state_dict(state)
    elif cfg.stage1.enabled:
        adapter = load_adapter(fold_dir / "stage1_adapter.safetensors")
        encoder = dataclasses.replace(encoder, model=torch.nn.Sequential(encoder.model, adapter),
                                      dim=adapter.feature_dim)
    encoder.model.eval()
    return encoder, mil, config


def _best_fold(run: Path) -> int:
    scores = {}
    for fold_dir in sorted(run.glob("fold_*")):
        path = fold_dir / "student.safetensors"
        if path.is_file():
            _, meta = load_state(path)
            scores[int(fold_dir.name.split("_")[1])] = float(meta.get("val_auc", float("-inf")))
    if not scores:
        raise FileFormatError(f"run {run} has no trained student (fold_*/student.safetensors)")
    return max(sorted(scores), key=lambda k: scores[k])
