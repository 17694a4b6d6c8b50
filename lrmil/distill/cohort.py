"""The cohort a run trains on: labels, and where every slide's LR and HR features are.

Nothing here holds features: `load_cohort` checks, from the files' metadata (and each slide's
small `parent` / `child` index arrays), everything that would otherwise stop a run half way,
before anything is written or trained: every slide of the labels CSV has LR and HR features,
one embedding size per magnification (a slide of another size is named), one encoder identity
(name and weights digest, the slides of a second one are named), HR rows linked to existing LR
patches; and it names the slides that have features but are absent from the labels CSV instead
of dropping them silently. Values are checked (NaN/inf) where they are read, by the feature
store.

A slide listed with an empty label is unlabelled: it is checked like the others and joins
stage 1 only (`stage1.slides=all`), never MIL training, validation, metrics or the splits.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lrmil.data.store import ArrayKey, FeatureStore, FileInfo
from lrmil.distill.splits import ROLES, Fold
from lrmil.errors import ConfigError, FileFormatError
from lrmil.utils.csvfile import read_csv

UNLABELLED = -1  # the label of a slide listed with an empty label


@dataclass(frozen=True)
class Slide:
    name: str
    label: int  # class index; UNLABELLED for a slide with an empty label
    patient: str
    lr_path: str  # FEAT/lr/<slide>.h5
    hr_path: str  # FEAT/hr/<slide>.h5
    n_lr: int  # LR patches
    n_hr: int  # valid HR children
    hr_itemsize: int  # bytes per stored HR value (2: float16, 4: float32)
    layers: frozenset[str] = frozenset()  # per-layer HR embeddings the HR file holds
    coords_path: str | None = None  # the coords file the LR features were embedded from


@dataclass
class Cohort:
    slides: dict[str, Slide]  # the labelled slides: MIL training, validation, metrics, splits
    class_names: list[str]
    lr_encoder: str
    hr_encoder: str
    r: int  # children per side of an LR patch (K = r * r)
    lr_dim: int
    hr_dim: int
    store: FeatureStore
    layer_dims: dict[str, int] = field(default_factory=dict)  # {layer: C_l} over the HR files
    encoder_seed: int = 0  # the seed the LR encoder was built with (built-ins), from the attrs
    lr_attrs: dict = field(default_factory=dict)  # attrs of an LR features file (patch size...)
    unlisted: list[str] = field(default_factory=list)  # features, absent from the labels CSV
    unlabelled: dict[str, Slide] = field(default_factory=dict)  # empty label: stage 1 only

    @property
    def names(self) -> list[str]:
        """The labelled slides, sorted."""
        return sorted(self.slides)

    @property
    def unlabelled_names(self) -> list[str]:
        return sorted(self.unlabelled)

    def slide(self, name: str) -> Slide:
        """A labelled or unlabelled slide."""
        return self.slides[name] if name in self.slides else self.unlabelled[name]

    def label_of(self) -> dict[str, int]:
        return {name: s.label for name, s in self.slides.items()}

    def counts(self, names: list[str] | None = None) -> dict[str, dict[str, int]]:
        """{class: {"slides": n, "patients": n}} over `names` (default every slide)."""
        chosen = [self.slides[n] for n in (self.names if names is None else names)]
        slides = Counter(s.label for s in chosen)
        patients = Counter(label for label, _ in {(s.label, s.patient) for s in chosen})
        return {name: {"slides": slides[c], "patients": patients[c]}
                for c, name in enumerate(self.class_names)}

    def split_counts(self, folds: list[Fold]) -> dict[str, dict[str, dict[str, dict[str, int]]]]:
        """{fold: {train|val|test: counts(...)}}: what every fold trained and was tested on."""
        return {str(f.index): {role: self.counts(f.role(role)) for role in ROLES} for f in folds}

    def summary(self) -> dict[str, Any]:
        """What the report says about the cohort."""
        return {"counts": self.counts(), "slides": len(self.slides),
                "patients": len({s.patient for s in self.slides.values()}),
                "unlisted": self.unlisted, "unlabelled": self.unlabelled_names}

    # Where each array of a slide is (read them with `cohort.store`).
    def lr(self, name: str) -> ArrayKey:
        return (self.slide(name).lr_path, "features")

    def lr_coords(self, name: str) -> ArrayKey:
        return (self.slide(name).lr_path, "coords")

    def hr(self, name: str) -> ArrayKey:
        return (self.slide(name).hr_path, "features")

    def parent(self, name: str) -> ArrayKey:
        return (self.slide(name).hr_path, "parent")

    def child(self, name: str) -> ArrayKey:
        return (self.slide(name).hr_path, "child")

    def layer(self, name: str, layer: str) -> ArrayKey:
        return (self.slide(name).hr_path, f"layers/{layer}")


# Every fold's train, validation and test sets hold each class, so a class needs 3 slides.
MIN_CLASS_SLIDES = 3


def read_labels(path: Path) -> tuple[dict[str, str], dict[str, str]]:
    """`slide,label[,patient]` -> ({slide: label}, {slide: patient}); patient defaults to the
    slide; an empty label ("") marks an unlabelled slide. A slide may be given by its name or
    its file name or path (`slide_name_in_csv`)."""
    from lrmil.wsi import slide_name_in_csv

    table = read_csv(path, "labels CSV", ("slide", "label"))
    labels, patients = {}, {}
    for line, row in table.records():
        slide, label = slide_name_in_csv(row["slide"]), row["label"]
        if not slide:
            raise FileFormatError(f"labels CSV {path} line {line}: empty slide name")
        if slide in labels:
            raise FileFormatError(f"labels CSV {path} line {line}: slide {slide!r} repeated")
        labels[slide] = label
        patients[slide] = row.get("patient") or slide
    if not labels:
        raise FileFormatError(f"labels CSV {path} has no rows")
    return labels, patients


def class_names_of(labels: dict[str, str], path: Path) -> list[str]:
    """Sorted class names (numerically when every label is an integer); empty labels are
    unlabelled slides, not a class."""
    names = set(labels.values()) - {""}
    if not names:
        raise ConfigError(f"labels CSV {path} has no labelled slide")
    if len(names) < 2:
        raise ConfigError(f"labels CSV {path} has a single class {next(iter(names))!r}: "
                          "a classifier needs at least two")
    if all(n.lstrip("-").isdigit() for n in names):
        return sorted(names, key=int)
    return sorted(names)


def check_class_sizes(labels: dict[str, str], path: Path) -> None:
    """Every class needs a slide in each fold's train, validation and test set; a class with
    fewer is most often a typo in the labels CSV (unlabelled slides are no class)."""
    counts = Counter(label for label in labels.values() if label)
    rare = sorted(n for n in counts if counts[n] < MIN_CLASS_SLIDES)
    if rare:
        others = ", ".join(f"{n!r}: {counts[n]}" for n in sorted(counts) if n not in rare)
        raise ConfigError(
            f"labels CSV {path}: class {rare[0]!r} has {counts[rare[0]]} slide(s), fewer than the "
            f"{MIN_CLASS_SLIDES} that train, validation and test each need one of; a typo in the "
            f"label? (other classes: {others})")


def load_cohort(features_dir: Path, labels_csv: Path, store: FeatureStore | None = None
                ) -> Cohort:
    """Every listed slide's `FEAT/lr/<slide>.h5` and `FEAT/hr/<slide>.h5`, checked (module
    doc), labelled ones in `slides`, those with an empty label in `unlabelled`; `store` reads
    them later (default: one without a cache)."""
    store = store or FeatureStore()
    labels, patients = read_labels(labels_csv)
    class_names = class_names_of(labels, labels_csv)
    lr_dir, hr_dir = features_dir / "lr", features_dir / "hr"
    for folder in (lr_dir, hr_dir):
        if not folder.is_dir():
            raise FileFormatError(f"features folder {folder} does not exist (expected "
                                  f"{features_dir}/lr and {features_dir}/hr from lrmil embed)")
    on_disk = {p.stem for folder in (lr_dir, hr_dir) for p in folder.glob("*.h5")}
    unknown = sorted(s for s in labels if s not in on_disk)
    if unknown:
        raise FileFormatError(
            f"labels CSV {labels_csv}: {len(unknown)} slide(s) unknown to {features_dir} "
            f"(no features file): {few(unknown)}")
    for folder, kind in ((lr_dir, "LR"), (hr_dir, "HR")):
        missing = sorted(s for s in labels if not (folder / f"{s}.h5").exists())
        if missing:
            raise FileFormatError(f"{len(missing)} slide(s) have no {kind} features in {folder}: "
                                  f"{few(missing)}")

    check_class_sizes(labels, labels_csv)
    names = sorted(labels)
    lr_info = {n: store.inspect(lr_dir / f"{n}.h5") for n in names}
    hr_info = {n: store.inspect(hr_dir / f"{n}.h5") for n in names}
    lr_dim = _one_dim(lr_info, "LR", lr_dir)
    hr_dim = _one_dim(hr_info, "HR", hr_dir)
    lr_encoder = _one_encoder(lr_info, lr_dir)
    hr_encoder = _one_encoder(hr_info, hr_dir)
    layer_dims = _layer_dims(hr_info, hr_dir)

    index, top_child = {}, 0
    for name in names:
        lr, hr = lr_info[name], hr_info[name]
        n_lr, n_hr = lr.shapes["features"][0], hr.shapes["features"][0]
        for info, n, what in ((lr, n_lr, "coords"), (hr, n_hr, "parent"), (hr, n_hr, "child")):
            if info.shapes[what][0] != n:
                raise FileFormatError(f"features file {info.path}: '{what}' has "
                                      f"{info.shapes[what][0]} rows, features {n}")
        parent, child = store.read((hr.path, "parent")), store.read((hr.path, "child"))
        if n_hr and (int(parent.min()) < 0 or int(parent.max()) >= n_lr):
            raise FileFormatError(f"HR features {hr.path}: parent index out of range for the "
                                  f"{n_lr} LR patches of {lr.path}")
        index[name] = (int(child.min(initial=0)), int(child.max(initial=0)))
        top_child = max(top_child, index[name][1])
    r = _r(hr_info, hr_dir, top_child)
    slides = {}
    for name in names:
        lr, hr = lr_info[name], hr_info[name]
        if index[name][0] < 0 or index[name][1] >= r * r:
            raise FileFormatError(f"HR features {hr.path}: child index out of range for "
                                  f"r = {r} ({r * r} children per LR patch)")
        slides[name] = Slide(
            name, class_names.index(labels[name]) if labels[name] else UNLABELLED,
            patients[name], lr.path, hr.path,
            lr.shapes["features"][0], hr.shapes["features"][0], hr.dtypes["features"].itemsize,
            frozenset(k.removeprefix("layers/") for k in hr.shapes if k.startswith("layers/")),
            lr.attrs.get("coords_path"))
    labelled = {n: s for n, s in slides.items() if s.label != UNLABELLED}
    first = lr_info[min(labelled)].attrs
    return Cohort(labelled, class_names, lr_encoder, hr_encoder, r, lr_dim, hr_dim, store,
                  layer_dims, int(first.get("seed", 0)), dict(first),
                  sorted(on_disk - set(labels)),
                  {n: s for n, s in slides.items() if s.label == UNLABELLED})


def _shape_problem(info: FileInfo) -> str | None:
    shape = info.shapes.get("features")
    if shape is None or "coords" not in info.shapes:
        return "lacks a 'features' or 'coords' dataset"
    if len(shape) == 3 and shape[0] == 1:  # some extractors keep a batch axis
        shape = shape[1:]
        info.shapes["features"] = shape
    if len(shape) != 2 or shape[0] == 0:
        return (f"has features of shape {shape}, empty or not (N, D); a slide with no tissue "
                "patch cannot be classified: remove it from the labels CSV")
    return None


def _one_dim(infos: dict[str, FileInfo], kind: str, folder: Path) -> int:
    """The one embedding size of a magnification's files, naming the slides that differ."""
    for info in infos.values():
        problem = _shape_problem(info)
        if problem:
            raise FileFormatError(f"{kind} features {info.path} {problem}")
        if kind == "HR" and ("parent" not in info.shapes or "child" not in info.shapes):
            raise FileFormatError(f"HR features {info.path} lack parent/child: they must come "
                                  "from lrmil tile + embed")
    dims = {name: info.shapes["features"][1] for name, info in infos.items()}
    return int(_one_value(dims, f"{kind} features in {folder} mix embedding sizes"))


def _one_encoder(infos: dict[str, FileInfo], folder: Path) -> str:
    """The encoder name, refusing files made by another encoder or other weights under the same
    name (the weights digest lrmil embed records)."""
    def identity(info: FileInfo) -> str:
        name, digest = str(info.attrs.get("encoder", "")), info.attrs.get("encoder_digest")
        return f"{name} (weights digest {digest})" if digest else name

    _one_value({n: identity(i) for n, i in infos.items()}, f"{folder} mixes encoders")
    return str(next(iter(infos.values())).attrs.get("encoder", ""))


def _layer_dims(infos: dict[str, FileInfo], folder: Path) -> dict[str, int]:
    widths: dict[str, dict[str, int]] = {}
    for name, info in infos.items():
        for key, shape in info.shapes.items():
            if key.startswith("layers/"):
                if shape[0] != info.shapes["features"][0]:
                    raise FileFormatError(f"features file {info.path}: '{key}' has {shape[0]} "
                                          f"rows, features {info.shapes['features'][0]}")
                widths.setdefault(key.removeprefix("layers/"), {})[name] = shape[-1]
    return {layer: int(_one_value(by_slide, f"{folder}: layer {layer} mixes widths"))
            for layer, by_slide in widths.items()}


def _r(infos: dict[str, FileInfo], folder: Path, top_child: int) -> int:
    """r from the files' attrs (one value), else the smallest grid holding every child."""
    given = {n: int(i.attrs["r"]) for n, i in infos.items() if i.attrs.get("r")}
    if given:
        return int(_one_value(given, f"{folder} mixes r (HR children per LR side)"))
    return max(2, math.isqrt(top_child) + 1)


def _one_value(by_slide: dict[str, Any], problem: str) -> Any:
    """The value every slide has; else a FileFormatError naming the slides of the rarer
    values (the common value is what the cohort was meant to be)."""
    groups: dict[Any, list[str]] = {}
    for name, value in by_slide.items():
        groups.setdefault(value, []).append(name)
    if len(groups) == 1:
        return next(iter(groups))
    ranked = sorted(groups.items(), key=lambda kv: (-len(kv[1]), str(kv[0])))
    common, others = ranked[0], ranked[1:]
    parts = [f"{value} in {len(slides)} slide(s): {few(sorted(slides))}"
             for value, slides in others]
    raise FileFormatError(f"{problem}: {common[0]} in {len(common[1])} slide(s), "
                          + "; ".join(parts))


def few(names: list[str], n: int = 5) -> str:
    return ", ".join(names[:n]) + (f" and {len(names) - n} more" if len(names) > n else "")

