"""Step 2: patch-level cross-resolution distillation (method.md, stage 1).

For LR patch i with valid children C(i), the student's final embedding s_i is pulled towards the
frozen HR teacher's child embeddings t_ik, weighted by the teacher MIL's attention over the
children (L_attn, `child_mse`); in `encoder` mode the student's intermediate grids are also
pulled, block by block, towards the HR embeddings of the same layers (L_layer, `block_mse`).

- `encoder`: fine-tunes a copy of the LR encoder on LR pixels read from the slides, then
  re-embeds every LR patch with it.
- `adapter`: a residual MLP on the cached LR features (CPU-friendly, L_attn only), then projects
  every slide's LR features.

Only the fold's training slides are distilled from (the teacher's attention on them is what it
learned); the outputs cover every slide so the student can be validated and tested.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import ConcatDataset, DataLoader

from lrmil.data import PatchDataset
from lrmil.distill.checkpoint import load_state, save_module
from lrmil.distill.cohort import Cohort, SlideFeatures
from lrmil.distill.config import DistillConfig, Stage1Config
from lrmil.distill.train import autocast
from lrmil.errors import ConfigError, FileFormatError
from lrmil.ops import block_mse, child_mse
from lrmil.utils.atomic import atomic_path

FEATURES = "stage1_features.safetensors"


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


@dataclass
class Targets:
    """The teacher side of stage 1 for the training rows (LR patches with a valid child)."""

    slide: list[str]  # per row
    row: torch.Tensor  # (R,) LR patch index within its slide
    lr: torch.Tensor  # (R, D_lr) the cached LR features of the rows (adapter input)
    t: torch.Tensor  # (R, K, D) HR child embeddings (zeros where invalid)
    valid: torch.Tensor  # (R, K) bool
    weight: torch.Tensor  # (R, K) teacher attention softmax over the valid children
    layers: dict[str, torch.Tensor]  # {layer: (R, K, C_l)}


def child_targets(slide: SlideFeatures, attn_logits: torch.Tensor, r: int,
                  layers: list[str]) -> Targets:
    """Scatter one slide's HR rows into dense (N_lr, K, .) children, keep rows with a child."""
    n, k = slide.lr.shape[0], r * r
    valid = torch.zeros(n, k, dtype=torch.bool)
    valid[slide.parent, slide.child] = True
    logits = torch.full((n, k), float("-inf"))
    logits[slide.parent, slide.child] = attn_logits.float()
    keep = valid.any(1)
    weight = torch.softmax(logits[keep], dim=1)

    def dense(values: torch.Tensor) -> torch.Tensor:
        out = values.new_zeros(n, k, values.shape[1])
        out[slide.parent, slide.child] = values
        return out[keep]

    rows = torch.nonzero(keep).flatten()
    return Targets([slide.name] * len(rows), rows, slide.lr[rows], dense(slide.hr), valid[keep],
                   weight,
                   {layer: dense(slide.hr_layers[layer]) for layer in layers})


def gather_targets(cohort: Cohort, names: list[str],
                   teacher: dict[str, tuple[torch.Tensor, torch.Tensor]],
                   layers: list[str]) -> Targets:
    parts = [child_targets(cohort.slides[n], teacher[n][1], cohort.r, layers) for n in names]
    return Targets(
        [s for p in parts for s in p.slide], torch.cat([p.row for p in parts]),
        torch.cat([p.lr for p in parts]), torch.cat([p.t for p in parts]),
        torch.cat([p.valid for p in parts]),
        torch.cat([p.weight for p in parts]),
        {layer: torch.cat([p.layers[layer] for p in parts]) for layer in layers})


def run_stage1(cohort: Cohort, train_names: list[str],
               teacher: dict[str, tuple[torch.Tensor, torch.Tensor]], cfg: DistillConfig,
               fold_dir: Path, device: torch.device, seed: int) -> None:
    """Writes the stage-1 model and `stage1_features.safetensors` (every slide)."""
    torch.manual_seed(seed)
    if cfg.stage1.mode == "adapter":
        features = _adapter(cohort, train_names, teacher, cfg.stage1, fold_dir, device, seed)
    else:
        features = _encoder(cohort, train_names, teacher, cfg, fold_dir, device, seed)
    from safetensors.torch import save_file

    with atomic_path(fold_dir / FEATURES) as tmp:
        save_file({n: f.contiguous() for n, f in features.items()}, str(tmp))


def read_stage1_features(fold_dir: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    path = fold_dir / FEATURES
    if not path.is_file():
        raise FileFormatError(f"stage-1 features {path} do not exist: stage 1 did not finish")
    return load_file(str(path))


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


def _adapter(cohort: Cohort, train_names: list[str],
             teacher: dict[str, tuple[torch.Tensor, torch.Tensor]], cfg: Stage1Config,
             fold_dir: Path, device: torch.device, seed: int) -> dict[str, torch.Tensor]:
    targets = gather_targets(cohort, train_names, teacher, [])
    inputs = targets.lr
    adapter = Adapter(inputs.shape[1], targets.t.shape[2], cfg.adapter_hidden).to(device)
    params = list(adapter.parameters())
    n_rows = len(inputs)
    steps_per_epoch = -(-n_rows // cfg.batch_patches)
    optimizer, schedule = _optimise(params, cfg, cfg.epochs * steps_per_epoch)
    generator = torch.Generator().manual_seed(seed)
    adapter.train()
    for _ in range(cfg.epochs):
        for idx in torch.randperm(n_rows, generator=generator).split(cfg.batch_patches):
            s = adapter.align(inputs[idx].to(device))
            loss = cfg.lambda_attn * child_mse(s, targets.t[idx].to(device),
                                               targets.weight[idx].to(device)).mean()
            _step(loss, params, cfg, optimizer, schedule)
    adapter.eval()
    save_module(adapter, fold_dir / "stage1_adapter.safetensors",
                {"adapter": {"in_dim": adapter.in_dim, "out_dim": adapter.out_dim,
                             "hidden": adapter.hidden}, "encoder": cohort.lr_encoder})
    with torch.no_grad():
        return {n: adapter(s.lr.to(device)).float().cpu() for n, s in cohort.slides.items()}


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


def slide_geometry(cohort: Cohort, tiled: str | None) -> SlideGeometry:
    """From `TILED/coords/<slide>.h5`, or the coords file the LR features name in their attrs;
    checked against the features' coords."""
    from lrmil.tiling import read_coords

    paths, size0, mpp, patch = {}, {}, {}, set()
    for name, slide in cohort.slides.items():
        path = Path(tiled) / "coords" / f"{name}.h5" if tiled else slide.coords_path
        if path is None:
            raise ConfigError("stage1.mode=encoder reads LR pixels but the LR features do not "
                              "name their coords file: give --tiled DIR (the folder lrmil tile "
                              "wrote) or use stage1.mode=adapter")
        if not Path(path).is_file():
            raise FileFormatError(f"slide {name!r} has no coords file {path}")
        coords = read_coords(path)
        if not np.array_equal(np.asarray(coords.coords), slide.lr_coords):
            raise FileFormatError(f"coords file {path} does not match the LR features of slide "
                                  f"{name!r} (different patches): re-run lrmil embed")
        paths[name], size0[name] = coords.slide_path, coords.lr_patch_size_level0
        mpp[name] = coords.level0_mpp
        patch.add(coords.patch_size)
    if len(patch) != 1:
        raise FileFormatError(f"the coords files mix patch sizes {sorted(patch)}")
    return SlideGeometry(paths, size0, mpp, patch.pop())


class _Indexed(ConcatDataset):
    """Patches of several slides; items carry their index in the concatenation."""

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return super().__getitem__(i)[0], i


def _patches(geo: SlideGeometry, name: str, coords: np.ndarray) -> PatchDataset:
    return PatchDataset(geo.paths[name], coords, geo.size0[name], geo.patch_size, geo.mpp[name])


def _encoder(cohort: Cohort, train_names: list[str],
             teacher: dict[str, tuple[torch.Tensor, torch.Tensor]], cfg: DistillConfig,
             fold_dir: Path, device: torch.device, seed: int) -> dict[str, torch.Tensor]:
    from lrmil.encoders import build

    s1 = cfg.stage1
    geo = slide_geometry(cohort, cfg.tiled)
    encoder = build(cohort.lr_encoder, s1.encoder_weights, seed=cohort.encoder_seed)
    hr_dim = next(iter(cohort.slides.values())).hr.shape[1]
    if encoder.dim != hr_dim:
        raise ConfigError(f"stage1.mode=encoder needs the same embedding size at both "
                          f"resolutions: LR encoder {encoder.name} gives {encoder.dim}, HR "
                          f"features have {hr_dim}; use stage1.mode=adapter")
    layers = list(s1.layers) or [
        layer for layer in encoder.default_layers
        if all(layer in s.hr_layers for s in cohort.slides.values())]
    encoder.check_layers(layers)
    for layer in layers:
        if encoder.grid_size(layer, geo.patch_size) % cohort.r:
            raise ConfigError(f"layer {layer}'s grid is not divisible by r = {cohort.r}")
        missing = [n for n in train_names if layer not in cohort.slides[n].hr_layers]
        if missing:
            raise FileFormatError(f"HR features of slide {missing[0]!r} lack layers/{layer} "
                                  "(embed HR with --layers)")
    targets = gather_targets(cohort, train_names, teacher, layers)
    # Target rows are grouped by slide: one PatchDataset per slide, concatenated in that order.
    rows: dict[str, list[int]] = {}
    for name, row in zip(targets.slide, targets.row.tolist(), strict=True):
        rows.setdefault(name, []).append(row)
    dataset = _Indexed([_patches(geo, n, cohort.slides[n].lr_coords[r]) for n, r in rows.items()])

    encoder.to(device)
    model = encoder.model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    steps_per_epoch = -(-len(dataset) // s1.batch_patches)
    optimizer, schedule = _optimise(params, s1, s1.epochs * steps_per_epoch)
    for epoch in range(s1.epochs):
        loader = DataLoader(dataset, batch_size=s1.batch_patches, shuffle=True,
                            generator=torch.Generator().manual_seed(seed + epoch),
                            num_workers=s1.read_workers)
        for patches, idx in loader:
            with autocast(device):
                s, grids, _ = encoder.forward_features(encoder.preprocess(patches.to(device)),
                                                       layers)
            valid = targets.valid[idx].to(device)
            loss = s1.lambda_attn * child_mse(s.float(), targets.t[idx].to(device),
                                              targets.weight[idx].to(device))
            if layers:
                per_layer = [block_mse(grids[name].float(), targets.layers[name][idx].to(device),
                                       valid, cohort.r) for name in layers]
                loss = loss + s1.lambda_layer * torch.stack(per_layer).mean(0)
            _step(loss.mean(), params, s1, optimizer, schedule)
    model.eval()
    save_module(model, fold_dir / "stage1_encoder.safetensors",
                {"encoder": encoder.name, "layers": layers, "seed": cohort.encoder_seed})
    # Re-embed every LR patch of every slide exactly as `lrmil embed` (and inference) does.
    from lrmil.embed import encode_dataset

    return {name: torch.from_numpy(encode_dataset(
        _patches(geo, name, slide.lr_coords), encoder, batch_size=s1.batch_patches,
        workers=s1.read_workers, device=device)[0]) for name, slide in cohort.slides.items()}
