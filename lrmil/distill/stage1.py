"""Step 2: patch-level cross-resolution distillation (method.md, stage 1).

For LR patch i with valid children C(i), the student's final embedding s_i is pulled towards the
frozen HR teacher's child embeddings t_ik, weighted by the teacher MIL's attention over the
children (L_attn, `child_mse`); in `encoder` mode the student's intermediate grids are also
pulled, block by block, towards the HR embeddings of the same layers (L_layer, `block_mse`).

- `encoder`: fine-tunes a copy of the LR encoder on LR pixels read from the slides, then
  re-embeds every LR patch with it.
- `adapter`: a residual MLP on the cached LR features (CPU-friendly, L_attn only), then projects
  every slide's LR features.

The attention term is the paper's weighted MSE (`stage1.objective=mse`) or VICReg between the
patch embedding and its weighted children's embedding (`vicreg`, lrmil.distill.vicreg); the
children's weights are the fold's teacher's attention over them or uniform (`stage1.weights`).

Which slides are distilled from (`stage1_slides`): the fold's labelled training slides
(`stage1.slides=train`), or every slide outside its test set, unlabelled ones included (`all`:
no label is read, the teacher's attention on any slide is inference); never a test patient's
slide. The outputs cover every labelled slide so the student can be validated and tested.

Nothing holds the cohort: the training rows (LR patches with a valid child) are shuffled within
groups of slides whose HR features fit in `stage1.shuffle_mb`; a group's arrays are read through
the feature store as stored and the dense (B, K, D) teacher targets are built batch by batch.
When every training slide fits in one group (small cohorts) the shuffle is global. The stage-1
features are written slide by slide to `stage1_features.h5`.

Several processes (a fold's torchrun team, lrmil.distill.parallel) can train one stage 1 under
DistributedDataParallel (`Replicas`): each draws the same global batches and trains on its share
of each, so the global batch, the optimizer steps and the model are those of one process (up to
the order of floating-point sums). The first process writes the model and the features.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import closing
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch
from torch import nn
from torch.utils.data import (
    BatchSampler,
    ConcatDataset,
    DataLoader,
    RandomSampler,
    Sampler,
    default_collate,
)

from lrmil.data import PatchDataset
from lrmil.data.store import ArrayKey
from lrmil.distill.bags import as_float
from lrmil.distill.checkpoint import load_state, save_module
from lrmil.distill.cohort import Cohort, Slide, few
from lrmil.distill.config import DistillConfig, Stage1Config
from lrmil.distill.layout import FoldLayout
from lrmil.distill.splits import Fold
from lrmil.distill.teacher import teacher_attn_logits
from lrmil.distill.train import autocast
from lrmil.distill.vicreg import Projector, vicreg_terms, weighted_children
from lrmil.errors import ConfigError, FileFormatError
from lrmil.ops import block_mse, child_mse
from lrmil.utils.atomic import atomic_path


class Adapter(nn.Module):
    """Stage 1 on cached features. `align(x) = skip(x) + mlp(x)` is trained towards the HR
    teacher's children (the MLP's last layer starts at zero, so it starts from the un-distilled
    features: identity, or a linear map where the dimensions differ). The stage-1 feature is
    `forward(x) = [x, align(x)]`, `feature_dim` wide: a regression onto the mean child pulls most
    rows towards the (mostly normal) average and would drop the LR encoder's own faint cues."""

    def __init__(self, in_dim: int, out_dim: int, hidden: int = 512) -> None:
        super().__init__()
        self.in_dim, self.out_dim, self.hidden = in_dim, out_dim, hidden
        self.feature_dim = in_dim + out_dim
        self.skip = nn.Identity() if in_dim == out_dim else nn.Linear(in_dim, out_dim)
        self.mlp = nn.Sequential(nn.Linear(in_dim, hidden), nn.GELU(), nn.Linear(hidden, out_dim))
        nn.init.zeros_(self.mlp[2].weight)
        nn.init.zeros_(self.mlp[2].bias)

    def align(self, x: torch.Tensor) -> torch.Tensor:
        return self.skip(x) + self.mlp(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, self.align(x)], dim=-1)


def stage1_features(out: FoldLayout, slide: str) -> ArrayKey:
    """Where a slide's stage-1 features (N, D) are."""
    return (str(out.stage1_features), slide)


def stage1_slides(cohort: Cohort, fold: Fold, which: str) -> list[str]:
    """The slides fold's stage 1 distils from (module doc), sorted."""
    if which == "train":
        return sorted(fold.train)
    if which != "all":
        raise ValueError(f"stage1.slides must be 'train' or 'all', got {which!r}")
    test = set(fold.test)
    test_patients = {cohort.slides[name].patient for name in test}
    return sorted(name for name in (*cohort.names, *cohort.unlabelled_names)
                  if name not in test and cohort.slide(name).patient not in test_patients)


def _participants(cohort: Cohort, cfg: Stage1Config) -> dict[str, Slide]:
    """Every slide some fold's stage 1 may read (what `check_stage1` checks)."""
    return {**cohort.slides, **(cohort.unlabelled if cfg.slides == "all" else {})}


class Objective:
    """The attention term of stage 1 (module doc): `objective(s, t, weight)` is a loss per row
    (mse) or one for the batch (vicreg, through a trained projector); the caller means it."""

    def __init__(self, cfg: Stage1Config, dim: int, device: torch.device) -> None:
        self.cfg = cfg
        self.projector = (Projector(dim, list(cfg.vicreg_projector)).to(device).train()
                          if cfg.objective == "vicreg" else None)

    def parameters(self) -> list[nn.Parameter]:
        return list(self.projector.parameters()) if self.projector is not None else []

    def takes(self, rows: int) -> bool:
        """Whether a batch of `rows` rows trains: VICReg skips a batch of one (no variance)."""
        return self.projector is None or rows >= 2

    def __call__(self, s: torch.Tensor, t: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        if self.projector is None:
            return child_mse(s, t, weight)
        terms = vicreg_terms(self.projector(s.float()),
                             self.projector(weighted_children(t, weight)))
        return terms.loss(self.cfg.vicreg_sim, self.cfg.vicreg_var, self.cfg.vicreg_cov)


# ------------------------------------------------------------------------- teacher targets


@dataclass
class SlideTargets:
    """One slide's teacher side of stage 1, compact: its arrays as stored and, for each training
    row (an LR patch with a valid child), the HR row of each of its K children (-1: none)."""

    name: str
    rows: np.ndarray  # (R,) LR patch index of each training row
    children: np.ndarray  # (R, K) int64
    attn: np.ndarray  # (M,) the teacher's attention logits over the HR rows
    hr: np.ndarray  # (M, D) HR child embeddings
    lr: np.ndarray | None  # (N, D_lr) cached LR features (adapter input)
    layers: dict[str, np.ndarray]  # {layer: (M, C_l)}


def child_table(parent: np.ndarray, child: np.ndarray, n_lr: int, k: int
                ) -> tuple[np.ndarray, np.ndarray]:
    """(rows, children): the LR patches with a valid child and the HR row of each child."""
    table = np.full((n_lr, k), -1, dtype=np.int64)
    table[parent.astype(np.int64), child.astype(np.int64)] = np.arange(len(parent))
    rows = np.nonzero((table >= 0).any(1))[0]
    return rows, table[rows]


@dataclass
class TargetBatch:
    t: torch.Tensor  # (B, K, D) float32, zeros where invalid
    valid: torch.Tensor  # (B, K) bool
    weight: torch.Tensor  # (B, K) softmax of the teacher's attention over the valid children
    layers: dict[str, torch.Tensor]  # {layer: (B, K, C_l)}
    lr: torch.Tensor | None  # (B, D_lr) float32


class Group:
    """The targets of some slides, rows numbered in slide order; `batch(idx)` densifies rows."""

    def __init__(self, slides: list[SlideTargets]) -> None:
        self.slides = slides
        self.slide_of = np.concatenate([np.full(len(s.rows), i) for i, s in enumerate(slides)])
        self.row_of = np.concatenate([np.arange(len(s.rows)) for s in slides])

    def __len__(self) -> int:
        return len(self.row_of)

    def release(self) -> None:
        """Let the arrays go (the next group is about to be read)."""
        self.slides = []

    def patch_rows(self) -> list[tuple[str, np.ndarray]]:
        """(slide, LR patch indices) in row order."""
        return [(s.name, s.rows) for s in self.slides]

    def batch(self, idx: np.ndarray) -> TargetBatch:
        slide_of, row_of = self.slide_of[idx], self.row_of[idx]
        first = self.slides[0]
        k, d = first.children.shape[1], first.hr.shape[1]
        t = torch.zeros(len(idx), k, d)
        logits = torch.full((len(idx), k), float("-inf"))
        layers = {name: torch.zeros(len(idx), k, v.shape[1]) for name, v in first.layers.items()}
        lr = torch.zeros(len(idx), first.lr.shape[1]) if first.lr is not None else None
        children = torch.full((len(idx), k), -1, dtype=torch.int64)
        for i in np.unique(slide_of):
            slide, at = self.slides[i], np.nonzero(slide_of == i)[0]
            ch = slide.children[row_of[at]]
            children[at] = torch.from_numpy(ch)
            valid = ch >= 0
            pos, kk = np.nonzero(valid)
            hr_rows = ch[valid]
            t[at[pos], kk] = as_float(slide.hr[hr_rows])
            logits[at[pos], kk] = torch.from_numpy(slide.attn[hr_rows].astype(np.float32))
            for name, values in slide.layers.items():
                layers[name][at[pos], kk] = as_float(values[hr_rows])
            if lr is not None and slide.lr is not None:
                lr[at] = as_float(slide.lr[slide.rows[row_of[at]]])
        return TargetBatch(t, children >= 0, torch.softmax(logits, dim=1), layers, lr)


def _plan(cohort: Cohort, names: list[str], layers: list[str], cfg: Stage1Config, seed: int
          ) -> list[list[list[str]]]:
    """Per epoch, the groups of training slides (module doc): one group of every slide in
    order when they fit in `cfg.shuffle_mb`, else consecutive runs of a per-epoch permutation
    (from `seed`), each within the budget (at least one slide)."""
    def size(name: str) -> int:
        slide = cohort.slide(name)
        width = cohort.hr_dim + sum(cohort.layer_dims[layer] for layer in layers)
        return slide.n_hr * width * slide.hr_itemsize

    budget = cfg.shuffle_mb * 2**20
    if sum(map(size, names)) <= budget:
        return [[list(names)] for _ in range(cfg.epochs)]
    plan = []
    for epoch in range(cfg.epochs):
        generator = torch.Generator().manual_seed(seed * 1009 + epoch)
        groups, group, used = [], [], 0
        for i in torch.randperm(len(names), generator=generator).tolist():
            if group and used + size(names[i]) > budget:
                groups.append(group)
                group, used = [], 0
            group.append(names[i])
            used += size(names[i])
        plan.append([*groups, group])
    return plan


def _load_groups(cohort: Cohort, plan: list[list[list[str]]], teacher_outputs: Path | None,
                 layers: list[str], with_lr: bool) -> Iterator[Group]:
    """The groups of the plan in order, read through the store (one at a time; a plan of one
    group, the same every epoch, is read once). No `teacher_outputs`: uniform weights."""
    k = cohort.r * cohort.r
    last: tuple[tuple[str, ...], Group] | None = None
    for groups in plan:
        for names in groups:
            if last is not None and last[0] == tuple(names):
                yield last[1]
                continue
            if last is not None:  # let the previous group go before reading the next
                last[1].release()
                last = None

            def keys(name: str) -> list[ArrayKey]:
                return [cohort.hr(name), cohort.parent(name), cohort.child(name),
                        *([teacher_attn_logits(teacher_outputs, name)]
                          if teacher_outputs is not None else []),
                        *(cohort.layer(name, layer) for layer in layers),
                        *([cohort.lr(name)] if with_lr else [])]

            slides = []
            for name, values in zip(names, cohort.store.stream([keys(n) for n in names]),
                                    strict=True):
                hr, parent, child, *rest = values
                # Equal logits: the softmax over the valid children is their mean.
                attn = (rest.pop(0) if teacher_outputs is not None
                        else np.zeros(len(parent), dtype=np.float32))
                rows, children = child_table(parent, child, cohort.slide(name).n_lr, k)
                slides.append(SlideTargets(name, rows, children, attn, hr,
                                           rest[len(layers)] if with_lr else None,
                                           dict(zip(layers, rest[:len(layers)], strict=False))))
            group = Group(slides)
            last = (tuple(names), group)
            yield group


def _row_counts(cohort: Cohort, names: list[str]) -> dict[str, int]:
    """Training rows per slide (LR patches with at least one valid child)."""
    parents = cohort.store.stream([[cohort.parent(n)] for n in names])
    return {n: len(np.unique(p)) for n, (p,) in zip(names, parents, strict=True)}


# --------------------------------------------------------------------------- data parallel


@dataclass(frozen=True)
class Replicas:
    """The processes that train one stage 1 together, or this one alone (the default). Each
    draws the same global batches (same seeds) and trains on every `count`-th row of each from
    `index` (a share may be empty: a last batch smaller than `count`; the process still steps,
    DDP's all-reduce needs it). DDP averages the gradients over the processes, so each scales
    its loss by count / rows: the average is the gradient of the global batch's mean loss."""

    count: int = 1
    index: int = 0  # 0 writes the model and the features
    process_group: Any = None  # what DDP reduces over: gloo on the CPU, nccl on CUDA

    @property
    def writes(self) -> bool:
        return self.index == 0

    def if_fits(self, fits: bool) -> Replicas | None:
        """These replicas where DDP gives the one-process model (`fits`), else the writer alone
        (the others get None: nothing to do)."""
        if fits or self.count == 1:
            return self
        return Replicas() if self.writes else None

    def share(self, batch: torch.Tensor) -> torch.Tensor:
        return batch[self.index::self.count]

    def batches(self, rows: int, size: int, generator: torch.Generator) -> Sampler[list[int]]:
        """This process's share of each shuffled batch of `size` of `rows` rows: the batches
        of DataLoader(shuffle=True, generator=generator) when given the same generator."""
        every = BatchSampler(RandomSampler(range(rows), generator=generator), size, False)
        return every if self.count == 1 else _Shares(every, self)

    def wrap(self, module: nn.Module, device: torch.device) -> nn.Module:
        """`module` under DDP (one process: as it is). An encoder may hold parameters its
        features never use (a classifier head); every step uses the same ones, so a static
        graph leaves those without a gradient, as in one process, where the default would
        fail the second step (and find_unused_parameters searches the graph every step)."""
        if self.count == 1:
            return module
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(
            module, device_ids=[device] if device.type == "cuda" else None,
            process_group=self.process_group, static_graph=True)

    def mean(self, per_row: torch.Tensor, rows: int) -> torch.Tensor:
        """This process's part of the mean over a global batch of `rows` rows."""
        if self.count == 1:
            return per_row.mean()
        return per_row.sum() * (self.count / rows)


class _Shares(Sampler[list[int]]):
    def __init__(self, batches: BatchSampler, replicas: Replicas) -> None:
        self.every, self.replicas = batches, replicas

    def __iter__(self) -> Iterator[list[int]]:
        for batch in self.every:
            yield batch[self.replicas.index::self.replicas.count]

    def __len__(self) -> int:
        return len(self.every)


class _Through(nn.Module):
    """`module` trained through `method` rather than its forward: DDP hooks its gradient
    reduction in through the forward of the module it wraps, so the step calls this one."""

    def __init__(self, module: nn.Module, method: Callable[..., Any]) -> None:
        super().__init__()
        self.module, self.method = module, method

    def forward(self, *args: Any) -> Any:
        return self.method(self.module, *args)


@dataclass(frozen=True)
class Stage1Part:
    """What this process did in a stage 1: `processes` trained it together (1: alone) and
    this one's steps read `rows` training rows (0: it did not train)."""

    processes: int
    rows: int


# --------------------------------------------------------------------------------- stage 1


def run_stage1(cohort: Cohort, train_names: list[str], cfg: DistillConfig, out: FoldLayout,
               device: torch.device, seed: int, geometry: SlideGeometry | None = None,
               replicas: Replicas = Replicas()) -> Stage1Part:
    """Writes the stage-1 model and `stage1_features.h5` (every slide); `geometry` (encoder
    mode): where each slide's LR patches are (`slide_geometry`); `replicas`: the processes
    training it together (each calls this), the first writes."""
    torch.manual_seed(seed)
    if cfg.stage1.mode == "adapter":
        return _adapter(cohort, train_names, cfg.stage1, out, device, seed, replicas)
    if geometry is None:
        raise ValueError("stage 1 in encoder mode needs the slides' geometry")
    return _encoder(cohort, train_names, cfg, out, device, seed, geometry, replicas)


def _data_parallel_objective(cfg: Stage1Config) -> bool:
    """VICReg's loss is one for the batch (variance, covariance over its rows): a share's loss
    is no part of it, so only the per-row MSE is trained across processes."""
    return cfg.objective == "mse"


def _optimise(params: list[nn.Parameter], cfg: Stage1Config, steps: int
              ) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return optimizer, torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, max(steps, 1))


def _step(loss: torch.Tensor, params: list[nn.Parameter], cfg: Stage1Config,
          optimizer: torch.optim.Optimizer, schedule: torch.optim.lr_scheduler.LRScheduler
          ) -> None:
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if cfg.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
    optimizer.step()
    schedule.step()


def _steps(plan: list[list[list[str]]], rows: dict[str, int], batch: int) -> int:
    return sum(math.ceil(sum(rows[n] for n in group) / batch)
               for groups in plan for group in groups)


def _write_features(cohort: Cohort, out: FoldLayout, features: Iterator[tuple[str, np.ndarray]]
                    ) -> None:
    """`/<slide> (N, D)` float32 for every slide, one at a time; the file appears complete."""
    with atomic_path(out.stage1_features) as tmp, h5py.File(tmp, "w") as fh:
        for name, values in features:
            fh[name] = values
    cohort.store.forget(out.stage1_features)  # a re-run of the step replaces it


def _teacher_outputs(cfg: Stage1Config, out: FoldLayout) -> Path | None:
    return out.teacher_outputs if cfg.weights == "teacher" else None


def _adapter(cohort: Cohort, train_names: list[str], cfg: Stage1Config, out: FoldLayout,
             device: torch.device, seed: int, replicas: Replicas) -> Stage1Part:
    team = replicas.if_fits(_data_parallel_objective(cfg))
    if team is None:
        return Stage1Part(1, 0)
    adapter = Adapter(cohort.lr_dim, cohort.hr_dim, cfg.adapter_hidden).to(device)
    align = team.wrap(_Through(adapter, Adapter.align), device)
    objective = Objective(cfg, cohort.hr_dim, device)
    params = [*adapter.parameters(), *objective.parameters()]
    plan = _plan(cohort, train_names, [], cfg, seed)
    optimizer, schedule = _optimise(
        params, cfg, _steps(plan, _row_counts(cohort, train_names), cfg.batch_patches))
    generator = torch.Generator().manual_seed(seed)
    adapter.train()
    rows = 0
    for group in _load_groups(cohort, plan, _teacher_outputs(cfg, out), [], with_lr=True):
        for idx in torch.randperm(len(group), generator=generator).split(cfg.batch_patches):
            if not objective.takes(len(idx)):
                continue
            targets = group.batch(team.share(idx).numpy())
            s = align(targets.lr.to(device))
            loss = cfg.lambda_attn * team.mean(objective(s, targets.t.to(device),
                                                         targets.weight.to(device)), len(idx))
            _step(loss, params, cfg, optimizer, schedule)
            rows += len(targets.t)
    if not team.writes:
        return Stage1Part(team.count, rows)
    adapter.eval()
    save_module(adapter, out.stage1_model("adapter"),
                {"adapter": {"in_dim": adapter.in_dim, "out_dim": adapter.out_dim,
                             "hidden": adapter.hidden}, "encoder": cohort.lr_encoder})

    def project() -> Iterator[tuple[str, np.ndarray]]:
        names = cohort.names
        with torch.no_grad():
            for name, (lr,) in zip(names, cohort.store.stream([[cohort.lr(n)] for n in names]),
                                   strict=True):
                yield name, adapter(as_float(lr).to(device)).float().cpu().numpy()

    _write_features(cohort, out, project())
    return Stage1Part(team.count, rows)


def load_adapter(path: Path) -> Adapter:
    state, meta = load_state(path)
    spec = meta.get("adapter")
    if not spec:
        raise FileFormatError(f"{path} is not an lrmil stage-1 adapter")
    adapter = Adapter(int(spec["in_dim"]), int(spec["out_dim"]), int(spec["hidden"]))
    adapter.load_state_dict(state)
    return adapter.eval()


# ----------------------------------------------------------------------------- encoder mode


@dataclass
class SlideGeometry:
    """Where and how to read each slide's LR patches (from its coords file)."""

    paths: dict[str, str]
    size0: dict[str, int]  # LR patch side in level-0 pixels
    mpp: dict[str, float]
    patch_size: int


def check_stage1(cohort: Cohort, cfg: DistillConfig) -> SlideGeometry | None:
    """What stage 1 needs, checked before anything trains; encoder mode: the slides' geometry."""
    s1 = cfg.stage1
    if not s1.enabled or s1.mode != "encoder":
        return None
    if cohort.lr_dim != cohort.hr_dim:
        raise ConfigError(f"stage1.mode=encoder needs the same embedding size at both "
                          f"resolutions: the LR features have {cohort.lr_dim}, the HR features "
                          f"{cohort.hr_dim}; use stage1.mode=adapter")
    for layer in s1.layers:
        missing = sorted(n for n, s in _participants(cohort, s1).items() if layer not in s.layers)
        if missing:
            raise FileFormatError(f"HR features of {len(missing)} slide(s) lack layers/{layer} "
                                  f"(embed HR with --layers): {few(missing)}")
    return slide_geometry(cohort, cfg.tiled, _participants(cohort, s1))


def slide_geometry(cohort: Cohort, tiled: str | None, slides: dict[str, Slide] | None = None
                   ) -> SlideGeometry:
    """From `TILED/coords/<slide>.h5`, or the coords file the LR features name in their attrs;
    checked against the features' coords; for `slides` (default: the labelled ones)."""
    from lrmil.tiling import read_coords

    if tiled and not (Path(tiled) / "coords").is_dir():
        raise ConfigError(f"--tiled {tiled}: no coords/ folder there; give the folder lrmil "
                          "tile wrote (it holds coords/<slide>.h5)")
    paths, size0, mpp, patch = {}, {}, {}, set()
    for name, slide in (cohort.slides if slides is None else slides).items():
        path = Path(tiled) / "coords" / f"{name}.h5" if tiled else slide.coords_path
        if path is None:
            raise ConfigError("stage1.mode=encoder reads LR pixels but the LR features do not "
                              "name their coords file: give --tiled DIR (the folder lrmil tile "
                              "wrote) or use stage1.mode=adapter")
        if not Path(path).is_file():
            raise FileFormatError(f"slide {name!r} has no coords file {path}")
        coords = read_coords(path)
        if not np.array_equal(np.asarray(coords.coords), cohort.store.read(cohort.lr_coords(name))):
            raise FileFormatError(f"coords file {path} does not match the LR features of slide "
                                  f"{name!r} (different patches): re-run lrmil embed")
        paths[name], size0[name] = coords.slide_path, coords.lr_patch_size_level0
        mpp[name] = coords.level0_mpp
        patch.add(coords.patch_size)
    if len(patch) != 1:
        raise FileFormatError(f"the coords files mix patch sizes {sorted(patch)}")
    return SlideGeometry(paths, size0, mpp, patch.pop())


def _collate(items: list[tuple[torch.Tensor, int]], patch_size: int
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """default_collate; an empty share of a batch (`Replicas`) is zero patches."""
    if items:
        return default_collate(items)
    return (torch.zeros(0, patch_size, patch_size, 3, dtype=torch.uint8),
            torch.zeros(0, dtype=torch.int64))


def _has_batchnorm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


class _Indexed(ConcatDataset):
    """Patches of several slides; items carry their index in the concatenation."""

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return super().__getitem__(i)[0], i

    def close(self) -> None:
        for part in self.datasets:
            part.close()  # type: ignore[attr-defined]


def _patches(geo: SlideGeometry, name: str, coords: np.ndarray) -> PatchDataset:
    return PatchDataset(geo.paths[name], coords, geo.size0[name], geo.patch_size, geo.mpp[name])


def _encoder(cohort: Cohort, train_names: list[str], cfg: DistillConfig, out: FoldLayout,
             device: torch.device, seed: int, geo: SlideGeometry, replicas: Replicas
             ) -> Stage1Part:
    from lrmil.encoders import build

    s1 = cfg.stage1
    encoder = build(cohort.lr_encoder, s1.encoder_weights, seed=cohort.encoder_seed)
    layers = list(s1.layers) or [
        layer for layer in encoder.default_layers
        if all(layer in s.layers for s in _participants(cohort, s1).values())]
    encoder.check_layers(layers)
    for layer in layers:
        if encoder.grid_size(layer, geo.patch_size) % cohort.r:
            raise ConfigError(f"layer {layer}'s grid is not divisible by r = {cohort.r}")

    # Batch statistics over a share are not the global batch's: BatchNorm needs SyncBatchNorm,
    # which runs on CUDA only.
    team = replicas.if_fits(_data_parallel_objective(s1) and (
        device.type == "cuda" or not _has_batchnorm(encoder.model)))
    if team is None:
        return Stage1Part(1, 0)
    if team.count > 1 and _has_batchnorm(encoder.model):
        encoder.model = nn.SyncBatchNorm.convert_sync_batchnorm(encoder.model,
                                                                team.process_group)
    encoder.to(device)
    model = encoder.model.train()
    net = team.wrap(_Through(model, lambda m, x: encoder.features_fn(m, x, layers)), device)
    objective = Objective(s1, cohort.hr_dim, device)
    params = [*(p for p in model.parameters() if p.requires_grad), *objective.parameters()]
    plan = _plan(cohort, train_names, layers, s1, seed)
    optimizer, schedule = _optimise(
        params, s1, _steps(plan, _row_counts(cohort, train_names), s1.batch_patches))
    groups = _load_groups(cohort, plan, _teacher_outputs(s1, out), layers, with_lr=False)
    trained = 0
    for epoch, epoch_groups in enumerate(plan):
        generator = torch.Generator().manual_seed(seed + epoch)
        for _ in epoch_groups:
            group = next(groups)
            coords = {n: cohort.store.read(cohort.lr_coords(n)) for n, _ in group.patch_rows()}
            dataset = _Indexed([_patches(geo, n, coords[n][rows])
                                for n, rows in group.patch_rows()])
            loader = DataLoader(dataset, batch_sampler=team.batches(len(dataset),
                                                                    s1.batch_patches, generator),
                                generator=generator, num_workers=s1.read_workers,
                                collate_fn=partial(_collate, patch_size=geo.patch_size))
            with closing(dataset):  # read_workers=0: the handles are opened in this process
                for step, (patches, idx) in enumerate(loader):
                    rows = min(s1.batch_patches, len(dataset) - step * s1.batch_patches)
                    if not objective.takes(rows):
                        continue
                    targets = group.batch(idx.numpy())
                    with autocast(device):
                        s, grids, _ = net(encoder.preprocess(patches.to(device)))
                    valid = targets.valid.to(device)
                    loss = s1.lambda_attn * objective(s.float(), targets.t.to(device),
                                                      targets.weight.to(device))
                    if layers:
                        per_layer = [block_mse(grids[name].float(),
                                               targets.layers[name].to(device), valid, cohort.r)
                                     for name in layers]
                        loss = loss + s1.lambda_layer * torch.stack(per_layer).mean(0)
                    _step(team.mean(loss, rows), params, s1, optimizer, schedule)
                    trained += len(idx)
    if not team.writes:
        return Stage1Part(team.count, trained)
    model.eval()
    save_module(model, out.stage1_model("encoder"),
                {"encoder": encoder.name, "layers": layers, "seed": cohort.encoder_seed})
    # Re-embed every LR patch of every slide exactly as `lrmil embed` (and inference) does.
    from lrmil.embed import encode_dataset

    def embed() -> Iterator[tuple[str, np.ndarray]]:
        for name in cohort.names:
            with closing(_patches(geo, name, cohort.store.read(cohort.lr_coords(name)))) as ds:
                feats = encode_dataset(ds, encoder, batch_size=s1.batch_patches,
                                       workers=s1.read_workers, device=device)[0]
            yield name, feats

    _write_features(cohort, out, embed())
    return Stage1Part(team.count, trained)
