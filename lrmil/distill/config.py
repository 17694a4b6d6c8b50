"""Every setting of `lrmil distill`, with documented defaults.

A config is a tree of dataclasses. It loads from a YAML or TOML file (any subset of the fields)
and takes dotted overrides such as `student.lambda_bag=0.5`; values are parsed as YAML scalars
and checked against the field's type, so a typo is refused with the key's full name.

How the defaults were chosen: the paper's lambdas, temperatures and k are not public. The MIL
architecture follows the authors' code (gated ABMIL, L = 128, AdamW, weight decay 1e-4) with
CLAM's shared input projection (here 128 wide): the student's instance classifier then shapes
the features its attention and classifier read (with no projection it had no shared weight and
the instance loss could not help the slide prediction). On the synthetic cohort with lrmil-cnn
features the authors' lr 2e-4 (and dropout) left the HR teacher unable to fit its training
slides within 40 epochs, so lr is 1e-3 on standardised inputs, 4 bags per batch, and no epoch
before the 10th is picked (validation sets are small and noisy). The distillation settings were
set on the synthetic cohort (bench/accuracy.py; bench/results/accuracy.md lists what was tried):
each KD term starts at roughly the size of the cross-entropy (logit KD at T = 2, attention KD at
T = 1 with weight 1, instance loss 0.5 on k = 8 patches); the teacher's attention is mapped to an
LR patch by its most attended child (max: a focus covers few of the r^2 children, and their mean
drowns it); stage 1 weighs its two terms equally and needs lr 1e-3 for 10 epochs (at 1e-4 for 3
epochs the LR encoder barely moved and the student matched "no stage 1").
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lrmil.errors import ConfigError
from lrmil.utils.atomic import atomic_write_text
from lrmil.utils.configfile import read_settings

ABLATIONS = ("no_stage1", "no_attn_kd", "no_logit_kd")


@dataclass
class TrainConfig:
    """Optimisation of one MIL model (teacher, student or baseline)."""

    epochs: int = 40  # upper bound; early stopping usually ends sooner
    batch_bags: int = 4  # bags packed into one batch (offsets), not batch size 1
    lr: float = 1e-3  # AdamW learning rate, cosine-annealed to 0 over `epochs`
    weight_decay: float = 1e-4
    grad_clip: float = 1.0  # max global grad norm; 0 disables clipping
    patience: int = 10  # epochs without a better validation AUC before stopping
    min_epochs: int = 10  # never stop, nor pick the best epoch, before this many epochs


@dataclass
class MILConfig:
    """Gated ABMIL architecture shared by teacher, student and baseline."""

    hidden: int = 128  # L, the gate's hidden size (authors' code)
    proj_dim: int | None = 128  # input projection (Linear + ReLU) before the gate; null: none
    dropout: float = 0.0  # on the (projected) instance features, training only
    standardize: bool = True  # standardise inputs with the training instances' mean / std


@dataclass
class Stage1Config:
    """Patch-level cross-resolution distillation of the LR encoder."""

    enabled: bool = True  # False = student on un-distilled LR features (ablation "no_stage1")
    mode: str = "encoder"  # "encoder": fine-tune the LR encoder on pixels; "adapter": projection
    layers: list[str] = field(default_factory=list)  # intermediate layers for L_layer (encoder)
    lambda_layer: float = 1.0
    lambda_attn: float = 1.0
    epochs: int = 10
    batch_patches: int = 64  # LR patches per step
    lr: float = 1e-3
    weight_decay: float = 1e-4
    grad_clip: float = 1.0
    adapter_hidden: int = 512  # hidden width of the adapter's residual MLP
    encoder_weights: str | None = None  # weights file for the LR encoder (default: built-in)
    read_workers: int = 2  # DataLoader processes reading LR pixels (0: the training process)
    # Rows are shuffled within groups of training slides whose HR features (as stored) fit in
    # this many MB, so stage 1 never holds the cohort (one group, a global shuffle, when the
    # training slides fit).
    shuffle_mb: int = 256
    # Which slides a fold's stage 1 distils from: "train", its labelled training slides; "all",
    # every slide outside its test set (validation and unlabelled slides too), never a slide of
    # a test patient. No label is read: stage 1 is label-free but for the teacher's attention.
    slides: str = "train"
    # The weights of an LR patch's children: "teacher", the fold's teacher MIL's attention over
    # them (inference, no label needed); "uniform", the mean of the valid children.
    weights: str = "teacher"
    # "mse": the paper's attention-weighted MSE; "vicreg": VICReg (Bardes et al. 2022, as used
    # by More From Less, Farndale et al. 2023) between the LR patch embedding and its weighted
    # HR children's embedding through a projector. The layer term stays MSE.
    objective: str = "mse"
    vicreg_projector: list[int] = field(default_factory=lambda: [2048, 2048])  # hidden, out
    # Invariance / variance / covariance weights: the VICReg paper's defaults (sim_coeff 25,
    # std_coeff 25, cov_coeff 1; facebookresearch/vicreg main_vicreg.py).
    vicreg_sim: float = 25.0
    vicreg_var: float = 25.0
    vicreg_cov: float = 1.0

    def validate_objective(self) -> None:
        for name, value, choices in (("slides", self.slides, ("train", "all")),
                                     ("weights", self.weights, ("teacher", "uniform")),
                                     ("objective", self.objective, ("mse", "vicreg"))):
            if value not in choices:
                raise ConfigError(f"stage1.{name} must be {' or '.join(map(repr, choices))}, "
                                  f"got {value!r}")
        if self.objective != "vicreg":
            return
        if self.batch_patches < 2:  # a batch of one row has no variance nor covariance
            raise ConfigError(f"stage1.objective=vicreg needs stage1.batch_patches >= 2 "
                              f"(per-batch variance and covariance), got {self.batch_patches}")
        if not self.vicreg_projector:  # each width is checked in RANGES
            raise ConfigError("stage1.vicreg_projector must list one or more widths, got []")


@dataclass
class StudentConfig:
    """The student's loss: CE + logit KD + attention KD + top-k/bottom-k instance loss."""

    lambda_ce: float = 1.0
    lambda_bag: float = 1.0  # logit KD weight
    t_bag: float = 2.0  # logit KD temperature
    lambda_soft: float = 1.0  # attention KD weight
    t_attn: float = 1.0  # attention KD temperature
    lambda_hard: float = 0.5  # instance loss weight
    topk: int = 8  # k top (label 1) and bottom (label 0) patches, capped at N // 2
    attn_map: str = "max"  # HR -> LR parent mapping of the teacher's attention logits: max|mean


@dataclass
class DataConfig:
    """How features are read (no result depends on these)."""

    cache_gb: float | None = None  # in-RAM cache of features; null: min(25% of RAM, 8); 0: none
    workers: int = 2  # DataLoader processes reading features files ahead of training
    prefetch: int = 2  # slides each worker reads ahead

    def cache_bytes(self) -> int:
        from lrmil.data.store import default_cache_bytes

        return default_cache_bytes() if self.cache_gb is None else int(self.cache_gb * 2**30)


@dataclass
class DistillConfig:
    """A whole `lrmil distill` run."""

    features: str = ""  # FEAT dir with lr/ and hr/ features files
    labels: str = ""  # CSV slide,label[,patient]
    out: str = ""  # the run folder
    tiled: str | None = None  # TILED dir with coords/ (slide paths for stage 1 encoder mode)
    folds: int = 5
    seed: int = 0
    splits_csv: str | None = None  # slide,fold_1..fold_k with train/val/test; else from seed
    val_fraction: float = 0.2  # share of the non-test patients used for validation
    device: str = "auto"  # auto | cpu | cuda[:i]; bf16 autocast on CUDA
    ablations: list[str] = field(default_factory=list)  # any of no_stage1, no_attn_kd, no_logit_kd
    # After the folds, train the deployable model on every labelled slide (RUN/final), the
    # epochs from the folds' best ones; `lrmil export` and `lrmil infer` use it by default.
    final: bool = True
    mil: MILConfig = field(default_factory=MILConfig)
    teacher: TrainConfig = field(default_factory=TrainConfig)
    baseline: TrainConfig = field(default_factory=TrainConfig)
    student: TrainConfig = field(default_factory=TrainConfig)
    kd: StudentConfig = field(default_factory=StudentConfig)
    stage1: Stage1Config = field(default_factory=Stage1Config)
    data: DataConfig = field(default_factory=DataConfig)

    def validate(self) -> DistillConfig:
        """Every setting checked, each refusal naming the setting: called before anything is
        read or written, so that a refused run leaves nothing behind."""
        flat = _flat_fields(self)
        for name, allowed in RANGES.items():
            value = flat[name]
            for item in value if isinstance(value, list) else [value]:  # a list: each item
                if item is not None:
                    allowed.check(name, item)
        if self.stage1.mode not in ("encoder", "adapter"):
            raise ConfigError(
                f"stage1.mode must be 'encoder' or 'adapter', got {self.stage1.mode!r}")
        if self.kd.attn_map not in ("mean", "max"):
            raise ConfigError(f"kd.attn_map must be 'mean' or 'max', got {self.kd.attn_map!r}")
        unknown = sorted(set(self.ablations) - set(ABLATIONS))
        if unknown:
            raise ConfigError(f"unknown ablations {unknown}; choose from {list(ABLATIONS)}")
        from lrmil.runner.distributed import rank_device

        rank_device(self.device, setting="device")  # auto, cpu, cuda, cuda:N, and present
        self.stage1.validate_objective()
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class Range:
    """The values a numeric setting may take: low <= v (low < v if open_low) and v <= high."""

    low: float | None = None
    high: float | None = None
    open_low: bool = False
    open_high: bool = False

    def check(self, name: str, value: float) -> None:
        ok = math.isfinite(value)
        if self.low is not None:
            ok = ok and (value > self.low if self.open_low else value >= self.low)
        if self.high is not None:
            ok = ok and (value < self.high if self.open_high else value <= self.high)
        if not ok:
            raise ConfigError(f"{name} must be {self.describe()}, got {value}")

    def describe(self) -> str:
        low = None if self.low is None else f"{'>' if self.open_low else '>='} {self.low:g}"
        high = None if self.high is None else f"{'<' if self.open_high else '<='} {self.high:g}"
        if low and high:
            return f"{low} and {high}"
        return low or high or "finite"


def _train_ranges(prefix: str) -> dict[str, Range]:
    return {f"{prefix}.epochs": Range(1), f"{prefix}.batch_bags": Range(1),
            f"{prefix}.lr": Range(0, open_low=True), f"{prefix}.weight_decay": Range(0),
            f"{prefix}.grad_clip": Range(0), f"{prefix}.patience": Range(1),
            f"{prefix}.min_epochs": Range(0)}


# Every numeric setting (a test checks that none is missing). A null, where the type allows
# it, is not checked.
RANGES: dict[str, Range] = {
    "folds": Range(2),
    "seed": Range(0),
    "val_fraction": Range(0, 1, open_low=True, open_high=True),
    "mil.hidden": Range(1),
    "mil.proj_dim": Range(1),
    "mil.dropout": Range(0, 1, open_high=True),
    **_train_ranges("teacher"), **_train_ranges("baseline"), **_train_ranges("student"),
    "kd.lambda_ce": Range(0), "kd.lambda_bag": Range(0), "kd.lambda_soft": Range(0),
    "kd.lambda_hard": Range(0),
    "kd.t_bag": Range(0, open_low=True), "kd.t_attn": Range(0, open_low=True),
    "kd.topk": Range(1),
    "stage1.lambda_layer": Range(0), "stage1.lambda_attn": Range(0),
    "stage1.epochs": Range(1), "stage1.batch_patches": Range(1),
    "stage1.lr": Range(0, open_low=True), "stage1.weight_decay": Range(0),
    "stage1.grad_clip": Range(0), "stage1.adapter_hidden": Range(1),
    "stage1.read_workers": Range(0), "stage1.shuffle_mb": Range(1),
    "stage1.vicreg_projector": Range(1),
    "stage1.vicreg_sim": Range(0), "stage1.vicreg_var": Range(0), "stage1.vicreg_cov": Range(0),
    "data.cache_gb": Range(0), "data.workers": Range(0), "data.prefetch": Range(1),
}


def _flat_fields(cfg: Any, prefix: str = "") -> dict[str, Any]:
    """{dotted setting: value} over the dataclass tree."""
    flat: dict[str, Any] = {}
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            flat.update(_flat_fields(value, f"{prefix}{f.name}."))
        else:
            flat[f"{prefix}{f.name}"] = value
    return flat


def from_dict(data: dict[str, Any], cls: type = DistillConfig, prefix: str = "") -> Any:
    """Build a (nested) config dataclass from a mapping, refusing unknown keys."""
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'} must be a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        if key not in names:
            raise ConfigError(f"unknown setting {prefix}{key}; known: {sorted(names)}")
        kwargs[key] = _coerce(value, hints[key], f"{prefix}{key}")
    return cls(**kwargs)


def load_config(path: str | Path | None = None, overrides: list[str] | None = None,
                **fields: Any) -> DistillConfig:
    """Defaults, then the file (YAML or TOML), then keyword fields, then dotted overrides."""
    data: dict[str, Any] = {}
    if path is not None:
        data = read_settings(path)
        try:  # the file's own names and types, before an override could hide a bad section
            from_dict(copy.deepcopy(data))
        except ConfigError as exc:
            raise ConfigError(f"config file {path}: {exc}") from None
    data = _merge(data, {k: v for k, v in fields.items() if v is not None})
    for item in overrides or []:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} must look like key.sub=value")
        _merge(data, _nest(key.strip().split("."), _parse_scalar(raw)))
    return from_dict(data).validate()


def save_config(cfg: DistillConfig, path: Path, extra: dict[str, Any] | None = None) -> None:
    payload = {**cfg.to_dict(), **(extra or {})}
    atomic_write_text(path, json.dumps(payload, indent=2, sort_keys=True))


def _parse_scalar(raw: str) -> Any:
    import yaml

    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError:
        return raw
    if isinstance(value, str):  # YAML 1.1 reads "3e-3" (no dot) as a string
        try:
            return float(value)
        except ValueError:
            pass
    return value


def _nest(keys: list[str], value: Any) -> dict[str, Any]:
    for key in reversed(keys):
        value = {key: value}
    return value


def _merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = value
    return base


def _coerce(value: Any, hint: Any, name: str) -> Any:
    """Check `value` against a field's type hint, converting the few safe cases."""
    if dataclasses.is_dataclass(hint):
        return from_dict(value, hint, f"{name}.")
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(hint)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, name)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if errors else f"{name}: bad value {value!r}")
    if origin is list:
        (item,) = typing.get_args(hint)
        if isinstance(value, str):  # `ablations=no_stage1,no_attn_kd` on the command line
            value = [v for v in value.split(",") if v]
        if not isinstance(value, list):
            raise ConfigError(f"{name} must be a list, got {value!r}")
        return [_coerce(v, item, name) for v in value]
    if hint is bool:
        if isinstance(value, bool):
            return value
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif hint is str and isinstance(value, (str, int, float)) and not isinstance(value, bool):
        return str(value)
    raise ConfigError(f"{name} must be {getattr(hint, '__name__', hint)}, got {value!r}")
