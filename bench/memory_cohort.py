"""Generated features of real-size slides for the memory benchmark (bench/memory.py).

Features files as `lrmil embed` writes them (lrmil/data/features.py), float16: per slide an LR
file of 768-d features and an HR file with r = 4 (16 children per LR patch, ~5% of them missing
as at a tissue edge), `parent` / `child` and two teacher layers `layers/blocks.6` and
`layers/blocks.9` (768-d). 350-600 LR patches per slide, so 5.3-9.1k HR patches (mean ~7.1k),
as a slide at 20x of a small cohort. Half the slides are positive: 3% of their LR patches hold a
weak shift along one direction (0.25 SD at LR, 1 SD in their HR children), so the models have
something to learn; nothing here is about accuracy.

`write_cohort(folder, n)` writes slides 0..n-1 once (a slide's file is kept when it exists; each
slide is generated from its own seed, so a larger cohort extends a smaller one) and
`cohort_view(folder, n)` gives a features folder + labels CSV of the first n slides (symlinks),
so runs of 10, 40 and 160 slides share one set of files.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from lrmil.data.features import Features, write_features

DIM = 768
R = 4
LAYERS = ("blocks.6", "blocks.9")
LR_PATCH = 256  # px at 5x; an LR patch covers 1024 level-0 px at 20x
ENCODER = "generated-768"


def slide_name(i: int) -> str:
    return f"slide_{i:04d}"


def label_of(i: int) -> int:
    return i % 2


def _slide(i: int) -> tuple[Features, Features]:
    rng = np.random.default_rng(1000 + i)
    n_lr = int(rng.integers(350, 601))
    side = int(np.ceil(np.sqrt(n_lr)))
    cells = rng.permutation(side * side)[:n_lr]
    size0 = LR_PATCH * 4  # level-0 px at 20x of a 5x patch
    lr_coords = np.stack([cells % side, cells // side], 1).astype(np.int64) * size0
    direction = np.zeros(DIM, np.float32)
    direction[: DIM // 8] = 1 / np.sqrt(DIM // 8)
    tumour = np.zeros(n_lr, bool)
    if label_of(i):
        tumour[rng.choice(n_lr, max(1, n_lr * 3 // 100), replace=False)] = True
    lr = rng.standard_normal((n_lr, DIM), dtype=np.float32)
    lr[tumour] += 0.25 * np.sqrt(DIM // 8) * direction

    keep = rng.random((n_lr, R * R)) > 0.05
    parent, child = np.nonzero(keep)
    n_hr = len(parent)
    hr = rng.standard_normal((n_hr, DIM), dtype=np.float32)
    hr += 0.5 * lr[parent]
    hr[tumour[parent]] += np.sqrt(DIM // 8) * direction
    hr_size0 = size0 // R
    hr_coords = lr_coords[parent] + np.stack([child % R, child // R], 1) * hr_size0
    # The teacher's intermediate layers: noisier views of the final embedding.
    layers = {name: (hr * scale + rng.standard_normal((n_hr, DIM), dtype=np.float32))
              for name, scale in zip(LAYERS, (0.5, 0.8), strict=True)}
    common = {"encoder": ENCODER, "patch_size": LR_PATCH, "r": R}
    lr_file = Features(lr, lr_coords, attrs={**common, "magnification": 5.0, "mag": "lr"})
    hr_file = Features(hr, hr_coords, parent.astype(np.int64), child.astype(np.int64), layers,
                       attrs={**common, "magnification": 20.0, "mag": "hr"})
    return lr_file, hr_file


def write_cohort(folder: Path, n: int) -> Path:
    """Slides 0..n-1 under `folder/all/{lr,hr}` (kept when already there); returns `all`."""
    root = folder / "all"
    for i in range(n):
        lr_path, hr_path = (root / mag / f"{slide_name(i)}.h5" for mag in ("lr", "hr"))
        if lr_path.exists() and hr_path.exists():
            continue
        lr_file, hr_file = _slide(i)
        write_features(hr_path, hr_file, dtype="float16")
        write_features(lr_path, lr_file, dtype="float16")  # written last: marks the slide done
    return root


def cohort_view(folder: Path, n: int) -> tuple[Path, Path]:
    """(features folder, labels CSV) of the first n slides, linked to `folder/all`."""
    root = write_cohort(folder, n)
    view = folder / f"n{n}"
    for mag in ("lr", "hr"):
        (view / mag).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            link = view / mag / f"{slide_name(i)}.h5"
            if not link.is_symlink():
                link.symlink_to(root / mag / f"{slide_name(i)}.h5")
    labels = folder / f"labels_n{n}.csv"
    with labels.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["slide", "label"])
        writer.writerows([slide_name(i), label_of(i)] for i in range(n))
    return view, labels


def disk_bytes(folder: Path, n: int) -> int:
    """Bytes on disk of the first n slides."""
    return sum((folder / "all" / mag / f"{slide_name(i)}.h5").stat().st_size
               for i in range(n) for mag in ("lr", "hr"))
