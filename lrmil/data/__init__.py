"""Data: patches read from slides by coordinates, and features files (lrmil, TRIDENT, CLAM)."""

from lrmil.data.features import (
    Features,
    parents_from_coords,
    read_attrs,
    read_features,
    write_features,
)
from lrmil.data.patches import PatchDataset

__all__ = [
    "Features",
    "PatchDataset",
    "parents_from_coords",
    "read_attrs",
    "read_features",
    "write_features",
]
