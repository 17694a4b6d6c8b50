"""Patient-level, stratified k-fold splits with train/val/test per fold.

Fold k tests on the k-th share of the patients of every class; the rest is split into train and
validation, again per class, so every slide of a patient lands in the same part. Splits round-trip
through a CSV `slide,fold_1..fold_k` whose cells are train/val/test.
"""

from __future__ import annotations

import csv
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lrmil.errors import ConfigError, FileFormatError
from lrmil.utils.atomic import atomic_path
from lrmil.utils.csvfile import read_csv

ROLES = ("train", "val", "test")


@dataclass(frozen=True)
class Fold:
    index: int  # 1-based, as in the CSV columns
    train: list[str]
    val: list[str]
    test: list[str]

    def role(self, name: str) -> list[str]:
        return {"train": self.train, "val": self.val, "test": self.test}[name]


def make_splits(slides: list[str], labels: list[int], patients: list[str], folds: int,
                seed: int, val_fraction: float = 0.2) -> list[Fold]:
    """Stratified by each patient's most common label; reproducible from `seed`."""
    patient_slides: dict[str, list[str]] = {}
    patient_labels: dict[str, Counter] = {}
    for slide, label, patient in zip(slides, labels, patients, strict=True):
        patient_slides.setdefault(patient, []).append(slide)
        patient_labels.setdefault(patient, Counter())[label] += 1
    by_class: dict[int, list[str]] = {}
    for patient in sorted(patient_slides):
        label = patient_labels[patient].most_common(1)[0][0]
        by_class.setdefault(label, []).append(patient)

    rng = np.random.default_rng(seed)
    fold_of: dict[str, int] = {}
    shuffled: dict[int, list[str]] = {}
    for label in sorted(by_class):
        group = [by_class[label][i] for i in rng.permutation(len(by_class[label]))]
        shuffled[label] = group
        offset = int(rng.integers(folds))  # rotate so small classes do not all start at fold 0
        for i, patient in enumerate(group):
            fold_of[patient] = (i + offset) % folds

    result = []
    for k in range(folds):
        parts: dict[str, list[str]] = {role: [] for role in ROLES}
        for label in sorted(shuffled):
            rest = [p for p in shuffled[label] if fold_of[p] != k]
            n_val = int(round(val_fraction * len(rest)))
            n_val = min(max(n_val, 1 if len(rest) >= 2 else 0), len(rest) - 1)
            for i, patient in enumerate(rest):
                parts["val" if i < n_val else "train"] += patient_slides[patient]
            for patient in shuffled[label]:
                if fold_of[patient] == k:
                    parts["test"] += patient_slides[patient]
        result.append(Fold(k + 1, *(sorted(parts[r]) for r in ROLES)))
    return result


def check_splits(folds: list[Fold], label_of: dict[str, int], class_names: list[str]) -> None:
    """Every part of every fold must hold every class: a fold with no positives cannot be
    trained or scored (AUC is undefined)."""
    for fold in folds:
        for role in ROLES:
            slides = fold.role(role)
            present = {label_of[s] for s in slides}
            missing = [class_names[c] for c in range(len(class_names)) if c not in present]
            if missing:
                raise ConfigError(
                    f"fold {fold.index}: the {role} set ({len(slides)} slides) has no slide of "
                    f"class {', '.join(map(repr, missing))}; use fewer folds or more slides"
                )


def write_splits(folds: list[Fold], path: Path) -> None:
    slides = sorted({s for fold in folds for role in ROLES for s in fold.role(role)})
    role_of = [{s: role for role in ROLES for s in fold.role(role)} for fold in folds]
    # A temporary name of this process's own: shards may write the same splits at once.
    with atomic_path(path) as tmp, tmp.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["slide"] + [f"fold_{f.index}" for f in folds])
        for slide in slides:
            writer.writerow([slide] + [roles.get(slide, "") for roles in role_of])


def read_splits(path: Path, known: set[str] | None = None) -> list[Fold]:
    """Read `slide,fold_1..fold_k`; an empty cell leaves the slide out of that fold."""
    table = read_csv(path, "splits file", ("slide",))
    header = table.header
    if header[0] != "slide" or len(header) < 3:
        raise FileFormatError(f"splits file {path}: header must be slide,fold_1,...,fold_k")
    parts: list[dict[str, list[str]]] = [{r: [] for r in ROLES} for _ in header[1:]]
    for line, row in table.rows:
        if len(row) != len(header):
            raise FileFormatError(f"splits file {path} line {line}: expected {len(header)} cells")
        slide = row[0]
        if known is not None and slide not in known:
            raise FileFormatError(f"splits file {path} line {line}: unknown slide {slide!r}")
        for k, cell in enumerate(row[1:]):
            cell = cell.strip().lower()
            if cell and cell not in ROLES:
                raise FileFormatError(
                    f"splits file {path} line {line}: {header[k + 1]} is {cell!r}, "
                    "expected train, val, test or empty"
                )
            if cell:
                parts[k][cell].append(slide)
    return [Fold(k + 1, *(sorted(p[r]) for r in ROLES)) for k, p in enumerate(parts)]
