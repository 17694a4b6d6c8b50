"""A tiny synthetic features cohort (no slides): for tests, examples and MIL benchmarks.

Every slide of class c > 0 has a share of "lesion" LR patches whose HR children carry a
class-specific direction with strength `hr_signal`; the same patches' LR features carry it with
strength `lr_signal` (faint or absent: the information is only clear at HR, as in LRMIL).
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from lrmil.data import Features, write_features

# Settings that train a toy cohort in seconds (tests, examples): dotted overrides.
TINY_OVERRIDES = [
    "folds=3", "teacher.epochs=6", "student.epochs=6", "baseline.epochs=6",
    "teacher.min_epochs=2", "student.min_epochs=2", "baseline.min_epochs=2",
    "stage1.mode=adapter", "stage1.epochs=2", "stage1.adapter_hidden=32", "mil.hidden=16",
    "kd.topk=2", "teacher.batch_bags=2", "student.batch_bags=2", "baseline.batch_bags=2",
    "teacher.lr=1e-2", "student.lr=1e-2", "baseline.lr=1e-2",
]


def write_toy_features(out: Path, n_slides: int = 20, n_lr: int = 12, r: int = 2,
                       dim: int = 16, n_classes: int = 2, hr_signal: float = 3.0,
                       lr_signal: float = 0.0, lesion_share: float = 0.25, seed: int = 0,
                       hr_dim: int | None = None,
                       encoder: str = "toy", slides_per_patient: int = 1,
                       layers: dict[str, int] | None = None) -> Path:
    """Write `out/lr/<slide>.h5`, `out/hr/<slide>.h5` and `out/labels.csv`; return the CSV.
    `dim` / `hr_dim` are the LR / HR feature sizes (HR defaults to LR's). `layers` {name: C_l}
    adds per-layer HR embeddings (random) for stage-1 encoder mode."""
    rng = np.random.default_rng(seed)
    hr_dim = hr_dim or dim

    def unit_rows(d: int) -> np.ndarray:
        v = rng.normal(size=(n_classes, d))
        return v / np.linalg.norm(v, axis=1, keepdims=True)

    lr_dirs, hr_dirs = unit_rows(dim), unit_rows(hr_dim)
    k = r * r
    rows = []
    for i in range(n_slides):
        name, label = f"slide_{i:03d}", i % n_classes
        lesion = rng.random(n_lr) < lesion_share if label > 0 else np.zeros(n_lr, dtype=bool)
        if label > 0 and not lesion.any():
            lesion[rng.integers(n_lr)] = True
        lr = rng.normal(size=(n_lr, dim)) + lr_signal * lesion[:, None] * lr_dirs[label]
        coords = np.stack([np.arange(n_lr) * 1024, np.zeros(n_lr)], axis=1).astype(np.int64)
        valid = rng.random((n_lr, k)) < 0.8
        valid[:, 0] = True  # every LR patch keeps at least one child
        parent, child = np.nonzero(valid)
        hr = (rng.normal(size=(len(parent), hr_dim))
              + hr_signal * lesion[parent, None] * hr_dirs[label])
        hr_coords = coords[parent] + 256 * np.stack([child % r, child // r], axis=1)
        attrs = {"encoder": encoder, "patch_size": 256}
        write_features(out / "lr" / f"{name}.h5",
                       Features(lr.astype(np.float32), coords, attrs={**attrs, "magnification": 5}))
        write_features(out / "hr" / f"{name}.h5", Features(
            hr.astype(np.float32), hr_coords, parent, child,
            {n: rng.normal(size=(len(parent), c)).astype(np.float32)
             for n, c in (layers or {}).items()},
            attrs={**attrs, "magnification": 20, "r": r}))
        rows.append((name, f"patient_{i // slides_per_patient:03d}", f"class_{label}"))
    labels = out / "labels.csv"
    with labels.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["slide", "patient", "label"])
        writer.writerows(rows)
    return labels
