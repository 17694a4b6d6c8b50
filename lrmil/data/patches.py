"""A Dataset of patches read from a slide on the fly."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from lrmil.wsi import Slide, open_slide


class PatchDataset(Dataset):
    """Item i: (uint8 (out_size, out_size, 3) tensor, i), the level-0 square of side `size0` at
    `coords[i]` resized to `out_size`.

    The slide is opened lazily on first use in each process, so every DataLoader worker reads
    through its own handle (OpenSlide handles must not cross a fork)."""

    def __init__(
        self,
        slide_path: str | Path,
        coords: np.ndarray,
        size0: int,
        out_size: int,
        mpp: float | None = None,
    ) -> None:
        self.slide_path = Path(slide_path)
        self.coords = np.asarray(coords, dtype=np.int64).reshape(-1, 2)
        self.size0 = int(size0)
        self.out_size = int(out_size)
        self.mpp = mpp
        self._slide: Slide | None = None

    def __len__(self) -> int:
        return len(self.coords)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        if self._slide is None:
            self._slide = open_slide(self.slide_path, self.mpp)
        x, y = self.coords[i]
        patch = self._slide.read_region(int(x), int(y), self.size0, self.out_size)
        return torch.from_numpy(np.require(patch, requirements=["C", "W"])), i

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_slide": None}  # workers open their own handle

    def close(self) -> None:
        if self._slide is not None:
            self._slide.close()
            self._slide = None
