"""Features files: one HDF5 per slide per encoder and magnification (interfaces.md "Files").

TRIDENT-compatible: `features` (N, D), `coords` (N, 2) and attrs `encoder`, `dim`,
`magnification`, `patch_size`; lrmil's HR files also hold `parent` (N,) and `child` (N,), and
optionally `layers/<name>` (N, C_l), the teacher's per-layer embeddings for stage 1. Files that
TRIDENT or CLAM wrote (`features` + `coords`, attrs anywhere) are read as they are.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from lrmil.errors import FileFormatError
from lrmil.utils.atomic import atomic_path

FORMAT = "lrmil-features/1"


@dataclass
class Features:
    features: np.ndarray  # (N, D) float32
    coords: np.ndarray  # (N, 2) int64, level-0 top-left corners
    parent: np.ndarray | None = None  # (N,) int64, HR only: row of the LR parent
    child: np.ndarray | None = None  # (N,) int64, HR only: k = v * r + u
    layers: dict[str, np.ndarray] = field(default_factory=dict)  # {name: (N, C_l) float32}
    attrs: dict[str, Any] = field(default_factory=dict)

    @property
    def dim(self) -> int:
        return self.features.shape[1]

    def __len__(self) -> int:
        return len(self.features)


def attr_value(value: Any) -> Any:
    """h5py attribute values -> plain Python (bytes -> str, 0-d arrays -> scalars)."""
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.generic):
        return value.item()
    return value


def write_features(path: str | Path, feats: Features, dtype: str = "float32",
                   layers_dtype: str | None = None) -> None:
    """Write `feats` atomically (the file appears only when complete). `dtype` of `features`,
    `layers_dtype` of `layers/*` (default: `dtype`): float32 or float16."""
    layers_dtype = dtype if layers_dtype is None else layers_dtype
    for value in (dtype, layers_dtype):
        if value not in ("float32", "float16"):
            raise ValueError(f"features dtype must be float32 or float16, got {value}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        f.attrs.update({k: v for k, v in feats.attrs.items() if v is not None})
        f.attrs["format"] = FORMAT
        f.attrs["dim"] = feats.dim
        f.create_dataset("features", data=feats.features.astype(dtype))
        f.create_dataset("coords", data=feats.coords.astype(np.int64))
        if feats.parent is not None and feats.child is not None:
            f.create_dataset("parent", data=feats.parent.astype(np.int64))
            f.create_dataset("child", data=feats.child.astype(np.int64))
        for name, values in feats.layers.items():
            f.create_dataset(f"layers/{name}", data=values.astype(layers_dtype))


def read_attrs(path: str | Path) -> dict[str, Any]:
    """The root attrs of a features file, or {} if it cannot be read (resume checks)."""
    try:
        with h5py.File(path, "r") as f:
            return {k: attr_value(v) for k, v in f.attrs.items()}
    except OSError:
        return {}


def read_features(
    path: str | Path,
    *,
    dim: int | None = None,
    lr_coords: np.ndarray | None = None,
    lr_patch_size_level0: int | None = None,
    r: int | None = None,
) -> Features:
    """Read an lrmil, TRIDENT or CLAM features file.

    `dim`: the encoder's embedding size; a file of another size is refused. For HR files without
    `parent` / `child` (TRIDENT, CLAM), give the LR `lr_coords`, `lr_patch_size_level0` and `r`
    to link each HR patch to its LR parent; HR patches outside every LR patch are dropped (their
    count is in `attrs["unlinked"]`)."""
    path = Path(path)
    if not path.is_file():
        raise FileFormatError(f"features file {path} does not exist")
    try:
        with h5py.File(path, "r") as f:
            if "features" not in f or "coords" not in f:
                raise FileFormatError(
                    f"features file {path} lacks a 'features' or 'coords' dataset"
                )
            attrs = {}
            for obj in (f["coords"], f["features"], f):  # TRIDENT/CLAM keep attrs on datasets
                attrs.update({k: attr_value(v) for k, v in obj.attrs.items()})
            features = np.asarray(f["features"][()], dtype=np.float32)
            coords = np.asarray(f["coords"][()]).astype(np.int64)
            parent = f["parent"][()].astype(np.int64) if "parent" in f else None
            child = f["child"][()].astype(np.int64) if "child" in f else None
            layers = {
                name: np.asarray(ds[()], dtype=np.float32)
                for name, ds in f.get("layers", {}).items()
            }
    except OSError as exc:
        raise FileFormatError(f"features file {path} is not a readable HDF5 file ({exc})") from None
    if features.ndim == 3 and features.shape[0] == 1:  # some extractors keep a batch axis
        features, coords = features[0], coords.reshape(-1, 2)
    n = len(features)
    if features.ndim != 2 or coords.shape != (n, 2):
        raise FileFormatError(
            f"features file {path}: features {features.shape} and coords {coords.shape} "
            "are not (N, D) and (N, 2)"
        )
    for name, values in [("parent", parent), ("child", child), *layers.items()]:
        if values is not None and len(values) != n:
            raise FileFormatError(
                f"features file {path}: '{name}' has {len(values)} rows, features {n}"
            )
    if dim is not None and features.shape[1] != dim:
        raise FileFormatError(
            f"features file {path} has dim {features.shape[1]} but the encoder gives {dim} "
            f"(file encoder: {attrs.get('encoder', 'unknown')})"
        )
    feats = Features(features, coords, parent, child, layers, attrs)
    if parent is None and lr_coords is not None:
        if lr_patch_size_level0 is None or r is None:
            raise ValueError("linking HR features to LR parents needs lr_patch_size_level0 and r")
        feats = link_to_parents(feats, lr_coords, lr_patch_size_level0, r, path)
    return feats


def parents_from_coords(
    hr_coords: np.ndarray, lr_coords: np.ndarray, lr_size0: int, r: int
) -> tuple[np.ndarray, np.ndarray]:
    """(parent, child) of each HR patch from coordinates: the LR patch whose level-0 square holds
    the HR patch's top-left corner, and k = v * r + u of the HR cell inside it. -1 where none."""
    if lr_size0 % r:
        raise FileFormatError(f"LR patch size {lr_size0} at level 0 is not divisible by r = {r}")
    hr_size0 = lr_size0 // r
    lr_index = {(int(x), int(y)): i for i, (x, y) in enumerate(lr_coords)}
    # LR patches are on one grid: its origin is any LR corner modulo the patch size.
    origin = lr_coords[0] % lr_size0 if len(lr_coords) else np.zeros(2, np.int64)
    corner = (hr_coords - origin) // lr_size0 * lr_size0 + origin
    parent = np.array([lr_index.get((int(x), int(y)), -1) for x, y in corner], dtype=np.int64)
    u, v = ((hr_coords - corner) // hr_size0).T
    child = np.where(parent >= 0, v * r + u, -1).astype(np.int64)
    return parent, child


def link_to_parents(
    feats: Features, lr_coords: np.ndarray, lr_size0: int, r: int, path: Path
) -> Features:
    parent, child = parents_from_coords(feats.coords, lr_coords, lr_size0, r)
    keep = parent >= 0
    aligned = (feats.coords[keep] - lr_coords[parent[keep]]) % (lr_size0 // r) == 0
    if not aligned.all():
        raise FileFormatError(
            f"features file {path}: HR coords are not on the r = {r} child grid of the LR patches "
            f"(patch size {lr_size0} at level 0)"
        )
    attrs = dict(feats.attrs, unlinked=int((~keep).sum()))
    return Features(
        feats.features[keep],
        feats.coords[keep],
        parent[keep],
        child[keep],
        {k: v[keep] for k, v in feats.layers.items()},
        attrs,
    )
