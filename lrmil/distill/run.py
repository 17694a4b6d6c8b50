"""`run(cfg)`: every step over every fold, the final model, the calibration, then the report
and the model card (the trained students are read by lrmil.distill.models).

Each step is skipped when its outputs exist (the model's safetensors file is written last), so
an interrupted run resumes where it stopped. Every step seeds itself from (seed, fold, step),
so a resumed run, or one whose folds are spread across torchrun ranks or shards
(lrmil.distill.parallel), gives the same models as an uninterrupted one-process run.
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

from lrmil.data.store import ArrayKey, FeatureStore
from lrmil.distill.baseline import train_baseline
from lrmil.distill.calibration import calibrate_run
from lrmil.distill.checkpoint import load_meta
from lrmil.distill.cohort import Cohort, few, load_cohort
from lrmil.distill.config import DistillConfig, save_config
from lrmil.distill.final import FINAL_FOLD, read_training, train_final
from lrmil.distill.layout import FoldLayout, RunLayout
from lrmil.distill.model_card import write_model_card
from lrmil.distill.parallel import FoldRanks, FoldTeam
from lrmil.distill.report import build_report, write_report
from lrmil.distill.splits import Fold, check_splits, make_splits, read_splits, write_splits
from lrmil.distill.stage1 import (
    SlideGeometry,
    check_stage1,
    run_stage1,
    stage1_features,
    stage1_slides,
)
from lrmil.distill.student import train_student
from lrmil.distill.teacher import train_teacher
from lrmil.distill.train import Progress
from lrmil.errors import ConfigError
from lrmil.runner.distributed import rank_device
from lrmil.utils.atomic import remove_stale_temps
from lrmil.utils.paths import check_out_path

# Settings that may change between a run and its resumption without changing any result.
RESUMABLE_CHANGES = {"out", "device", "ablations", "final", "stage1.read_workers", "features",
                     "labels", "tiled", "splits_csv", "data.cache_gb", "data.workers",
                     "data.prefetch"}

# Entered around every step that runs, with the step's description; what it yields is called
# after every training epoch with (epoch, stats) (the CLI's progress display).
StepHook = Callable[[str], contextlib.AbstractContextManager[Progress | None]]
NoteHook = Callable[[str], None]  # one line about the cohort, before training


def seed_for(seed: int, fold: int, step: str) -> int:
    """A stable per-(seed, fold, step) seed, independent of which steps already ran."""
    return (seed * 1_000_003 + fold * 7919 + zlib.crc32(step.encode())) % (2**31)


def cohort_notes(cohort: Cohort, cfg: DistillConfig) -> list[str]:
    """The lines a user reads before training: counts per class, unlabelled and unlisted
    slides."""
    counts = ", ".join(f"{name}: {c['slides']} slides / {c['patients']} patients"
                       for name, c in cohort.counts().items())
    notes = [f"cohort: {len(cohort.slides)} labelled slides ({counts})"]
    if cohort.unlabelled:
        use = ("stage 1 only" if cfg.stage1.enabled and cfg.stage1.slides == "all"
               else "not used (stage1.slides=train)")
        notes.append(f"{len(cohort.unlabelled)} unlabelled slide(s) (empty label), {use}: "
                     f"{few(cohort.unlabelled_names)}")
    if cohort.unlisted:
        notes.append(f"{len(cohort.unlisted)} slide(s) have features but are not in the "
                     f"labels CSV and are not used: {few(cohort.unlisted)}")
    return notes


def run(cfg: DistillConfig, on_step: StepHook | None = None,
        on_note: NoteHook | None = None, shard: str | None = None) -> dict[str, Any] | None:
    """Train teacher, stage 1, student, baseline and the ablations on every fold, then the
    final model on every labelled slide (`final`); calibrate on the folds' test predictions;
    write the report (metrics.json, report.md, roc.png, calibration.png) and the model card,
    and return the report. `on_step(description)` is entered
    around each step that runs (the CLI shows progress with it); `on_note(line)` gets the
    cohort's counts and warnings. Every input is checked before anything is written.

    Under torchrun the folds are spread across the ranks (lrmil.distill.parallel); rank 0
    writes the report and returns it, the other ranks return None. `shard` ("i/n"): train the
    folds dealt to shard i of n; the shard that completes the last fold writes the report and
    returns it, the others return None."""
    cfg.validate()
    check_out_path(cfg.out)
    hook = on_step or (lambda _desc: contextlib.nullcontext())
    note = on_note or (lambda _line: None)
    layout = RunLayout(Path(cfg.out))
    store = FeatureStore(cfg.data.cache_bytes(), cfg.data.workers, cfg.data.prefetch)
    cohort = load_cohort(Path(cfg.features), Path(cfg.labels), store)
    geometry = check_stage1(cohort, cfg)
    _check_config(cfg, layout)
    folds = _splits(cfg, cohort, layout)

    ranks = FoldRanks(layout.root, shard)
    device = torch.device(rank_device(cfg.device, ranks.ranks.local_rank))
    by_index = {f.index: f for f in folds}

    def fold_steps(team: FoldTeam) -> list[Step]:
        fold = by_index[team.fold]
        return list(_fold_steps(cfg, cohort, fold, layout.fold(fold.index), device, geometry,
                                team))

    def unfinished() -> list[int]:
        return [k for k in by_index
                if any(not step.done.exists() for step in fold_steps(FoldTeam.alone(k)))]

    with ranks:
        if ranks.prepares:
            for line in cohort_notes(cohort, cfg):
                note(line)
            layout.root.mkdir(parents=True, exist_ok=True)
            remove_stale_temps(layout.root)  # of processes killed mid-write
            _save_config(cfg, cohort, layout)
            write_splits(folds, layout.splits)
        # Rank 0's view of what is missing is dealt out (each shard deals every fold).
        for team in ranks.share(unfinished(), list(by_index), cfg.to_dict(), device):
            _train_fold(team, fold_steps(team), layout.fold(team.fold), hook)
            for done in (layout.fold(team.fold).teacher_outputs,
                         layout.fold(team.fold).stage1_features):
                store.forget(done)  # the next fold does not read this one's files
        ranks.finished()  # rank 0: every rank has finished its folds
        with ranks.reporting(unfinished,
                             lambda: _report_is_current(layout, folds, fold_steps)) as elsewhere:
            if elsewhere is not None:
                if elsewhere:
                    note(elsewhere)
                return None
            return _report(cfg, cohort, layout, folds, device, geometry, hook)


def _report(cfg: DistillConfig, cohort: Cohort, layout: RunLayout, folds: list[Fold],
            device: torch.device, geometry: SlideGeometry | None, hook: StepHook
            ) -> dict[str, Any]:
    """After every fold: the final model, the calibration, the report and the model card."""
    models = ["teacher", "baseline", "student", *(f"student_{a}" for a in cfg.ablations)]
    indices = [f.index for f in folds]
    if cfg.final:  # after every fold (its epochs come from theirs)
        train_final(cfg, cohort, layout, indices, device, geometry, hook,
                    lambda step: seed_for(cfg.seed, FINAL_FOLD, step))
    calibration = calibrate_run(layout, indices)
    report = build_report(layout.root, indices, models, cohort.class_names,
                          {"mode": cfg.stage1.mode if cfg.stage1.enabled else "none",
                           "cohort": cohort.summary(), "fold_counts": cohort.split_counts(folds),
                           "stage1": _stage1_summary(cfg, cohort, layout, folds),
                           "calibration": calibration.to_dict(),
                           "final": read_training(layout)}, seed=cfg.seed)
    write_report(layout.root, report)
    write_model_card(layout.root)
    return report


@dataclasses.dataclass(frozen=True)
class Step:
    """One training step of a fold: done when its last output exists. `together`: every rank
    of the fold's team takes part (stage 1); the others are its owner's alone."""

    name: str
    done: Path
    work: Callable[[Progress | None], None]
    together: bool = False


def _train_fold(team: FoldTeam, steps: list[Step], out: FoldLayout, hook: StepHook) -> None:
    """The steps of a fold that are not done. Teacher, student and baseline train on the owner
    alone: MIL training is I/O- and latency-bound (a step is a few small GEMMs over bags read
    from the feature store), so an all-reduce per step would cost about what it splits. Its
    team's other ranks join the owner for stage 1 and wait for it before and after."""
    if team.owner:
        out.dir.mkdir(exist_ok=True)
    for step in steps:
        todo = team.owner and not step.done.exists()
        if step.together:
            todo = team.agree(todo)  # the others wait here for the owner's earlier steps
        if todo:
            with hook(f"fold {team.fold}: {step.name}") as tick:
                step.work(tick)
    team.agree(None)  # and here for its last ones


def _report_is_current(layout: RunLayout, folds: list[Fold],
                       fold_steps: Callable[[FoldTeam], list[Step]]) -> bool:
    """Whether the model card (written last) is newer than every fold's outputs."""
    if not layout.model_card.exists():
        return False
    newest = max(step.done.stat().st_mtime_ns for f in folds
                 for step in fold_steps(FoldTeam.alone(f.index)))
    return layout.model_card.stat().st_mtime_ns >= newest


def _fold_steps(cfg: DistillConfig, cohort: Cohort, fold: Fold, out: FoldLayout,
                device: torch.device, geometry: SlideGeometry | None, team: FoldTeam
                ) -> Iterator[Step]:
    k = fold.index
    yield Step("teacher", out.model("teacher"),
               lambda tick: train_teacher(cohort, fold, cfg, out, device,
                                          seed_for(cfg.seed, k, "teacher"), tick))
    if cfg.stage1.enabled:
        yield Step(f"stage 1 ({cfg.stage1.mode})", out.stage1_features,
                   lambda _tick: team.trained_stage1(run_stage1(
                       cohort, stage1_slides(cohort, fold, cfg.stage1.slides), cfg, out, device,
                       seed_for(cfg.seed, k, "stage1"), geometry, team.replicas())),
                   together=True)

    def distilled(name: str) -> ArrayKey:
        return stage1_features(out, name)

    features: Callable[[str], ArrayKey] = distilled if cfg.stage1.enabled else cohort.lr
    variants = {"student": (cfg.kd, features)}
    if "no_stage1" in cfg.ablations:
        variants["student_no_stage1"] = (cfg.kd, cohort.lr)
    if "no_attn_kd" in cfg.ablations:
        variants["student_no_attn_kd"] = (dataclasses.replace(cfg.kd, lambda_soft=0.0), features)
    if "no_logit_kd" in cfg.ablations:
        variants["student_no_logit_kd"] = (dataclasses.replace(cfg.kd, lambda_bag=0.0), features)
    for name, (kd, feats) in variants.items():
        yield Step(name, out.model(name),
                   lambda tick, name=name, kd=kd, feats=feats: train_student(
                       cohort, fold, cfg, kd, feats, _width(cohort, feats), out, name, device,
                       seed_for(cfg.seed, k, "student"), tick))
    yield Step("baseline", out.model("baseline"),
               lambda tick: train_baseline(cohort, fold, cfg, out, device,
                                           seed_for(cfg.seed, k, "baseline"), tick))


def _stage1_summary(cfg: DistillConfig, cohort: Cohort, layout: RunLayout, folds: list[Fold]
                    ) -> dict[str, Any] | None:
    """What report.md says of stage 1: its settings, the slides each fold's saw and, where the
    teacher's attention weights the children, that teacher's validation AUC (known before any
    test slide is read): a teacher that validates poorly misleads stage 1 on every slide it
    weights, unlabelled ones included."""
    if not cfg.stage1.enabled:
        return None
    per_fold = {}
    for fold in folds:
        names = stage1_slides(cohort, fold, cfg.stage1.slides)
        unlabelled = sum(name in cohort.unlabelled for name in names)
        per_fold[str(fold.index)] = {"labelled": len(names) - unlabelled,
                                     "unlabelled": unlabelled}
        if cfg.stage1.weights == "teacher":
            meta = load_meta(layout.fold(fold.index).model("teacher"))
            per_fold[str(fold.index)]["teacher_val_auc"] = meta["val_auc"]
    return {"slides": cfg.stage1.slides, "weights": cfg.stage1.weights,
            "objective": cfg.stage1.objective, "per_fold": per_fold}


def _width(cohort: Cohort, features: Callable[[str], ArrayKey]) -> int:
    """The feature size of a student's input (read from its first slide's file)."""
    path, name = features(cohort.names[0])
    return int(cohort.store.inspect(path).shapes[name][-1])


def _flat(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat = {}
    for key, value in data.items():
        if isinstance(value, dict):
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _check_config(cfg: DistillConfig, layout: RunLayout) -> None:
    """An existing run folder is resumed only with settings that give the same results."""
    if layout.config.exists():
        saved = json.loads(layout.config.read_text())
        old = _flat({k: v for k, v in saved.items() if k in cfg.to_dict()})
        new = _flat(cfg.to_dict())
        changed = sorted(k for k in new if k not in RESUMABLE_CHANGES and old.get(k) != new[k])
        if changed:
            raise ConfigError(f"run folder {layout.root} was made with other settings "
                              f"({', '.join(changed)}); use a new --out or the same settings "
                              "to resume")


def _save_config(cfg: DistillConfig, cohort: Cohort, layout: RunLayout) -> None:
    from lrmil.info import versions

    extra = {"versions": versions(), "class_names": cohort.class_names,
             "encoder": {"lr": cohort.lr_encoder, "hr": cohort.hr_encoder,
                         "seed": cohort.encoder_seed,
                         "lr_digest": cohort.lr_attrs.get("encoder_digest")},
             "r": cohort.r, **_geometry(cfg, cohort)}
    save_config(cfg, layout.config, extra)


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


def _splits(cfg: DistillConfig, cohort: Cohort, layout: RunLayout) -> list[Fold]:
    if layout.splits.exists():
        folds = read_splits(layout.splits, set(cohort.slides))
    elif cfg.splits_csv:
        folds = read_splits(Path(cfg.splits_csv), set(cohort.slides))
    else:
        names = cohort.names
        folds = make_splits(names, [cohort.slides[n].label for n in names],
                            [cohort.slides[n].patient for n in names], cfg.folds, cfg.seed,
                            cfg.val_fraction)
    check_splits(folds, cohort.label_of(), cohort.class_names)
    return folds
