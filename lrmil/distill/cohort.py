"""The cohort a run trains on: labels, and every slide's LR and HR features, checked up front so
that bad input stops the run with one clear message before any training."""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from lrmil.errors import ConfigError, FileFormatError


@dataclass
class SlideFeatures:
    name: str
    label: int
    patient: str
    lr: torch.Tensor  # (N, D_lr) float32
    lr_coords: np.ndarray  # (N, 2) level-0 top-left of the LR patches
    hr: torch.Tensor  # (M, D_hr) float32, the valid children only
    parent: torch.Tensor  # (M,) int64, LR patch of each HR patch
    child: torch.Tensor  # (M,) int64, k = v*r + u within the parent
    hr_layers: dict[str, torch.Tensor] = field(default_factory=dict)  # {layer: (M, C_l)}
    coords_path: str | None = None  # the coords file the LR features were embedded from


@dataclass
class Cohort:
    slides: dict[str, SlideFeatures]
    class_names: list[str]
    lr_encoder: str
    hr_encoder: str
    r: int  # children per side of an LR patch (K = r * r)
    encoder_seed: int = 0  # the seed the LR encoder was built with (built-ins), from the attrs
    lr_attrs: dict = field(default_factory=dict)  # attrs of an LR features file (patch size...)

    @property
    def names(self) -> list[str]:
        return sorted(self.slides)

    def label_of(self) -> dict[str, int]:
        return {name: s.label for name, s in self.slides.items()}


def read_labels(path: Path) -> tuple[dict[str, str], dict[str, str]]:
    """`slide,label[,patient]` -> ({slide: label}, {slide: patient}); patient defaults to the
    slide."""
    if not path.is_file():
        raise FileFormatError(f"labels CSV {path} does not exist")
    with path.open(newline="") as fh:
        reader = csv.DictReader(fh)
        fields = reader.fieldnames or []
        if "slide" not in fields or "label" not in fields:
            raise FileFormatError(f"labels CSV {path} needs columns slide,label[,patient]; "
                                  f"found {fields}")
        labels, patients = {}, {}
        for line, row in enumerate(reader, start=2):
            slide, label = (row["slide"] or "").strip(), (row["label"] or "").strip()
            if not slide or not label:
                raise FileFormatError(f"labels CSV {path} line {line}: empty slide or label")
            if slide in labels:
                raise FileFormatError(f"labels CSV {path} line {line}: slide {slide!r} repeated")
            labels[slide] = label
            patients[slide] = (row.get("patient") or "").strip() or slide
    if not labels:
        raise FileFormatError(f"labels CSV {path} has no rows")
    return labels, patients


def class_names_of(labels: dict[str, str], path: Path) -> list[str]:
    """Sorted class names (numerically when every label is an integer)."""
    names = set(labels.values())
    if len(names) < 2:
        raise ConfigError(f"labels CSV {path} has a single class {next(iter(names))!r}: "
                          "a classifier needs at least two")
    if all(n.lstrip("-").isdigit() for n in names):
        return sorted(names, key=int)
    return sorted(names)


def load_cohort(features_dir: Path, labels_csv: Path) -> Cohort:
    """Read `FEAT/lr/<slide>.h5` and `FEAT/hr/<slide>.h5` for every slide of the labels CSV."""
    from lrmil.data import read_features

    labels, patients = read_labels(labels_csv)
    class_names = class_names_of(labels, labels_csv)
    lr_dir, hr_dir = features_dir / "lr", features_dir / "hr"
    for folder in (lr_dir, hr_dir):
        if not folder.is_dir():
            raise FileFormatError(f"features folder {folder} does not exist (expected "
                                  f"{features_dir}/lr and {features_dir}/hr from lrmil embed)")
    unknown = [s for s in labels if not (lr_dir / f"{s}.h5").exists()
               and not (hr_dir / f"{s}.h5").exists()]
    if unknown:
        raise FileFormatError(
            f"labels CSV {labels_csv}: {len(unknown)} slide(s) unknown to {features_dir} "
            f"(no features file): {_few(unknown)}")
    for folder, kind in ((lr_dir, "LR"), (hr_dir, "HR")):
        missing = [s for s in labels if not (folder / f"{s}.h5").exists()]
        if missing:
            raise FileFormatError(f"{len(missing)} slide(s) have no {kind} features in {folder}: "
                                  f"{_few(missing)}")

    slides, encoders, max_child, seed = {}, {"lr": set(), "hr": set()}, 0, 0
    for name in sorted(labels):
        lr = read_features(lr_dir / f"{name}.h5")
        hr = read_features(hr_dir / f"{name}.h5")
        for feats, kind, path in ((lr, "LR", lr_dir), (hr, "HR", hr_dir)):
            _check_values(np.asarray(feats.features), f"{kind} features of slide {name!r}",
                          path / f"{name}.h5")
        if hr.parent is None or hr.child is None:
            raise FileFormatError(f"HR features {hr_dir / name}.h5 lack parent/child: "
                                  "they must come from lrmil tile + embed")
        parent = torch.as_tensor(np.asarray(hr.parent), dtype=torch.int64)
        n_lr = len(lr.features)
        if len(parent) and (int(parent.min()) < 0 or int(parent.max()) >= n_lr):
            raise FileFormatError(f"HR features {hr_dir / name}.h5: parent index out of range "
                                  f"for the {n_lr} LR patches of {lr_dir / name}.h5")
        child = torch.as_tensor(np.asarray(hr.child), dtype=torch.int64)
        max_child = max(max_child, int(child.max()) if len(child) else 0)
        encoders["lr"].add(str(lr.attrs.get("encoder", "")))
        seed = int(lr.attrs.get("seed", 0))
        encoders["hr"].add(str(hr.attrs.get("encoder", "")))
        slides[name] = SlideFeatures(
            name=name, label=class_names.index(labels[name]), patient=patients[name],
            lr=torch.as_tensor(np.asarray(lr.features, dtype=np.float32)),
            lr_coords=np.asarray(lr.coords), hr=torch.as_tensor(np.asarray(hr.features,
                                                                           dtype=np.float32)),
            parent=parent, child=child,
            hr_layers={k: torch.as_tensor(np.asarray(v, dtype=np.float32))
                       for k, v in hr.layers.items()},
            coords_path=lr.attrs.get("coords_path"),
        )
    for kind, names in encoders.items():
        if len(names) > 1:
            raise FileFormatError(f"{features_dir}/{kind} mixes encoders {sorted(names)}")
    # r from the files' attrs when they carry it, else the smallest grid holding every child.
    r = int(hr.attrs.get("r", 0)) or max(2, math.isqrt(max_child) + 1)
    return Cohort(slides, class_names, encoders["lr"].pop(), encoders["hr"].pop(), r, seed,
                  dict(lr.attrs))


def _check_values(features: np.ndarray, what: str, path: Path) -> None:
    if features.ndim != 2 or features.shape[0] == 0:
        raise FileFormatError(f"{what} ({path}) are empty or not (N, D): shape {features.shape}"
                              "; a slide with no tissue patch cannot be classified: remove it "
                              "from the labels CSV")
    bad = ~np.isfinite(features)
    if bad.any():
        rows = np.unique(np.nonzero(bad)[0])
        raise FileFormatError(f"{what} ({path}) contain NaN/inf in {len(rows)} patch(es), "
                              f"first at row {rows[0]}")


def _few(names: list[str], n: int = 5) -> str:
    return ", ".join(names[:n]) + (f" and {len(names) - n} more" if len(names) > n else "")
