"""LR-only inference on one slide file: tissue mask -> LR grid -> encoder -> MIL head.

DataLoader workers read and resize patches (each worker opens the slide once) while the main
process encodes the previous batch; the whole bag is then aggregated in one call.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from lrmil.data.patches import PatchDataset
from lrmil.errors import SlideError
from lrmil.infer.engines.base import Engine
from lrmil.tiling.config import TilingConfig
from lrmil.tiling.tiler import tile_slide
from lrmil.utils.processes import dataloader_worker_init
from lrmil.wsi import open_slide


@dataclass
class SlidePrediction:
    name: str
    path: Path
    probabilities: np.ndarray  # (C,)
    attention: np.ndarray  # (N,), sums to 1
    coords: np.ndarray  # (N, 2) int64, LR patch top-left corners in level 0
    patch_size0: int  # LR patch side in level-0 pixels
    thumbnail: np.ndarray  # (h, w, 3) uint8, the whole slide at the tissue mask's magnification
    thumbnail_scale: float  # thumbnail pixels per level-0 pixel
    mask: np.ndarray  # (h, w) bool, the tissue mask
    mask_scale: tuple[float, float]  # mask pixels per level-0 pixel (x, y)
    origin: tuple[int, int] = (0, 0)  # level-0 corner a viewer shows as (0, 0) (bounds-x/y)
    timings: dict[str, float] = field(default_factory=dict)  # tissue, read, encode, aggregate

    def called(self, threshold: float | None) -> int:
        """The class called: the threshold on the second class (two classes), else argmax."""
        from lrmil.distill.calibration import decide

        return int(decide(self.probabilities[None], threshold)[0])


def predict_slide(path: str | Path, engine: Engine, tiling: TilingConfig, *,
                  mpp: float | None = None, batch_size: int = 64, workers: int = 2,
                  thumbnail_side: int = 1024,
                  on_patches: Callable[[int], None] | None = None) -> SlidePrediction:
    """Class probabilities and per-patch attention of one slide; `on_patches(n)` is called
    after each encoded batch (progress)."""
    path = Path(path)
    clock = time.perf_counter()
    with open_slide(path, mpp) as slide:
        tiles = tile_slide(slide, tiling, lr_only=True)
        name, origin = slide.name, slide.bounds_origin
        if len(tiles.coords) == 0:
            raise SlideError(f"{path}: no tissue found (no LR patch reaches the tissue threshold)")
        # The heatmap reuses the thumbnail the tissue mask was made from (no second read)
        # unless that is far smaller than asked, as on small slides.
        thumb, scale = _shrink(tiles.thumbnail, tiles.mask_scale[0], thumbnail_side)
        if 2 * max(thumb.shape[:2]) < min(thumbnail_side, max(slide.dimensions)):
            thumb = np.asarray(slide.thumbnail(thumbnail_side))
            scale = thumb.shape[1] / slide.dimensions[0]
    timings = {"tissue": time.perf_counter() - clock, "read": 0.0, "encode": 0.0}

    patches = PatchDataset(path, tiles.coords, tiles.geometry.lr_size0, tiling.patch_size, mpp)
    n_batches = math.ceil(len(patches) / batch_size)
    workers = min(workers, n_batches - 1)  # one batch: nothing to overlap, skip the spawn
    loader = DataLoader(patches, batch_size=batch_size, num_workers=workers,
                        pin_memory=engine.device.type == "cuda",
                        prefetch_factor=4 if workers else None,
                        worker_init_fn=dataloader_worker_init() if workers else None)
    embeddings = []
    try:
        waited = time.perf_counter()
        for batch, _ in loader:
            started = time.perf_counter()
            timings["read"] += started - waited  # time the encoder sat waiting for pixels
            embeddings.append(engine.encode(batch))
            waited = time.perf_counter()
            timings["encode"] += waited - started
            if on_patches is not None:
                on_patches(len(batch))
    finally:
        patches.close()
    started = time.perf_counter()
    probs, attn = engine.aggregate(torch.cat(embeddings))
    probs, attn = probs.cpu().numpy(), attn.cpu().numpy()
    timings["aggregate"] = time.perf_counter() - started
    timings["total"] = time.perf_counter() - clock
    return SlidePrediction(name, path, probs, attn, tiles.coords, tiles.geometry.lr_size0,
                           thumb, scale, tiles.mask, tiles.mask_scale, origin, timings)


def _shrink(image: np.ndarray, scale: float, max_side: int) -> tuple[np.ndarray, float]:
    """`image` (pixels `scale` level-0 pixels wide) with its longer side at most `max_side`."""
    from PIL import Image

    h, w = image.shape[:2]
    factor = min(1.0, max_side / max(h, w))
    if factor == 1.0:
        return image, scale
    size = (max(1, round(w * factor)), max(1, round(h * factor)))
    small = np.asarray(Image.fromarray(image).resize(size, Image.Resampling.BOX))
    return small, scale * size[0] / w


def tiling_for(meta_extra: dict, patch_size: int, magnification: float) -> TilingConfig:
    """The tiling the model was trained with (recorded in the run), else the defaults at the
    model's LR magnification and patch size."""
    recorded = meta_extra.get("tiling") or {}
    if recorded:
        return TilingConfig.from_dict(recorded)
    defaults = TilingConfig()
    ratio = defaults.hr_mag / defaults.lr_mag
    return TilingConfig(lr_mag=magnification, hr_mag=magnification * ratio,
                        patch_size=patch_size)
