"""`embed_slides`: encode the LR and/or HR patches of tiled slides into features files.

For each coords file `TILED/coords/<slide>.h5` and magnification, patches are read from the
slide on the fly by a DataLoader (each worker with its own slide handle), encoded in batches
under `torch.inference_mode` (autocast on a GPU where the encoder prefers it) and written
atomically to `OUT/{lr,hr}/<slide>.h5`, one slide at a time through the slide runner (claims,
torchrun ranks, shards: lrmil.runner). Outputs that are complete and match their inputs (coords
file, slide, encoder weights, settings) are skipped; a failing slide is recorded in
`OUT/errors.csv` and the others go on.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from lrmil.data.features import Features, read_attrs, write_features
from lrmil.data.patches import PatchDataset
from lrmil.encoders import Encoder, build
from lrmil.encoders.registry import library_versions
from lrmil.encoders.weights import file_sha256
from lrmil.errors import ConfigError, FileFormatError, LrmilError
from lrmil.info import versions
from lrmil.runner import (
    Done,
    Existing,
    FileIdentity,
    RunSummary,
    SlideItem,
    check_out_dir,
    run_slides,
    slide_items,
)
from lrmil.runner.distributed import Ranks, rank_device
from lrmil.tiling import TiledSlide, read_coords
from lrmil.tiling.coords_io import foreign_coords
from lrmil.utils.paths import check_out_path
from lrmil.utils.processes import dataloader_worker_init
from lrmil.utils.progress import SlideProgress

MAGS = {"lr": ("lr",), "hr": ("hr",), "both": ("lr", "hr")}
# Attrs that must match for an existing features file to be reused (besides the identity of
# its coords file, checked by lrmil.runner.FileIdentity).
MATCH_KEYS = (
    "encoder",
    "encoder_digest",
    "slide_size",
    "slide_mtime",
    "patch_size",
    "dtype",
    "layers",
    "n_patches",
)


def encoder_digest(encoder: Encoder) -> str:
    """A short hash of the encoder's weights: resume re-encodes when they change."""
    h = hashlib.blake2b(encoder.name.encode(), digest_size=8)
    for key, value in encoder.model.state_dict().items():
        h.update(key.encode())
        # flattened: 0-d tensors (BatchNorm's num_batches_tracked) have no byte view of their own
        h.update(value.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def check_slide_unchanged(ts: TiledSlide, coords_path: Path) -> Path:
    """The slide the coords were made from; FileFormatError if it is missing or differs."""
    slide = Path(ts.slide_path)
    if not slide.is_file():
        raise FileFormatError(f"coords file {coords_path}: slide {slide} does not exist")
    now = FileIdentity.of(slide)
    if not now.matches(FileIdentity(now.path, ts.slide_size, ts.slide_mtime)):
        raise FileFormatError(
            f"coords file {coords_path} was made from another version of {slide} "
            f"(size {ts.slide_size}, mtime {ts.slide_mtime:.0f}; "
            f"now {now.size}, {now.mtime:.0f}): tile it again"
        )
    return slide


def _patches(
    ts: TiledSlide, mag: str
) -> tuple[np.ndarray, int, np.ndarray | None, np.ndarray | None]:
    """(coords, level-0 size, parent, child) of the patches to encode at `mag`."""
    if mag == "lr":
        return ts.coords, ts.lr_patch_size_level0, None, None
    parent, child = np.nonzero(ts.hr_valid)  # row-major: parents in order, children by k
    return ts.hr_coords[parent, child], ts.hr_patch_size_level0, parent, child


def check_storable(values: np.ndarray, what: str, dtype: str, option: str) -> None:
    """Refuse (for this slide) embeddings that are NaN/inf, or that `dtype` would turn into inf:
    written, they would stop `lrmil distill` half way through a run."""
    finite = np.isfinite(values).all(axis=tuple(range(1, values.ndim)))
    if not finite.all():
        raise LrmilError(f"{what}: the encoder gave NaN/inf embeddings for {int((~finite).sum())} "
                         f"of {len(values)} patches (first: patch {int(np.argmin(finite))}); its "
                         "weights or precision do not suit these patches")
    limit = float(np.finfo(dtype).max)
    peak = float(np.abs(values).max(initial=0.0))
    if peak > limit:
        raise LrmilError(f"{what}: embeddings reach {peak:.3g}, beyond {dtype}'s {limit:.6g}: "
                         f"store them with {option} float32")


def encode_dataset(
    dataset: PatchDataset,
    encoder: Encoder,
    *,
    batch_size: int = 64,
    workers: int = 0,
    device: torch.device | str = "cpu",
    layers: Sequence[str] = (),
    on_batch: Callable[[int], None] | None = None,
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """(features (N, dim) float32, {layer: (N, C_l) float32}) of the patches, in order."""
    device = torch.device(device)
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        worker_init_fn=dataloader_worker_init() if workers else None,
    )
    n = len(dataset)
    out = np.empty((n, encoder.dim), dtype=np.float32)
    pooled_out = {layer: np.empty((n, encoder.layer_dims[layer]), np.float32) for layer in layers}
    low_precision = device.type == "cuda" and encoder.precision != torch.float32
    autocast = torch.autocast("cuda", dtype=encoder.precision) if low_precision else nullcontext()
    with torch.inference_mode(), autocast:
        for patches, index in loader:
            x = encoder.preprocess(patches.to(device, non_blocking=True))
            if layers:
                emb, _, pooled = encoder.forward_features(x, layers)
            else:
                emb, pooled = encoder.model(x), {}
            rows = index.numpy()
            out[rows] = emb.float().cpu().numpy()
            for layer, values in pooled.items():
                pooled_out[layer][rows] = values.float().cpu().numpy()
            if on_batch is not None:
                on_batch(len(rows))
    return out, pooled_out


def embed_slides(
    tiled_dir: str | Path,
    encoder: str | Encoder,
    out_dir: str | Path,
    *,
    mag: str = "both",
    weights: str | Path | None = None,
    seed: int = 0,
    model_kwargs: dict[str, Any] | None = None,
    random_init: bool = False,
    batch_size: int = 64,
    workers: int = 0,
    device: str = "auto",
    layers: Sequence[str] = (),
    dtype: str = "float32",
    layers_dtype: str = "float16",
    overwrite: bool = False,
    shard: str | None = None,
    progress: bool = False,
) -> RunSummary:
    """Encode every tiled slide of `tiled_dir` (its `coords/*.h5`) at `mag` ("lr", "hr" or
    "both") into `out_dir/{lr,hr}/<slide>.h5`. `encoder` is a registry name (built with
    `weights`, `seed`, `model_kwargs`, `random_init`) or a built Encoder. `layers` (or
    ["default"]: the encoder's default_layers) adds the per-layer pooled embeddings to HR files
    (`layers/<name>`, the stage-1 teacher targets, stored as `layers_dtype`: float16, the
    default, halves the largest arrays of a cohort at no measured accuracy cost).
    `device` "auto" is cuda where present (cuda:LOCAL_RANK under torchrun), else cpu. One result
    per slide, its magnifications together."""
    if mag not in MAGS:
        raise ConfigError(f"--mag must be one of {', '.join(MAGS)}, got {mag!r}")
    if batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {batch_size}")
    if workers < 0:
        raise ConfigError(f"--workers must be >= 0 (0: read in this process), got {workers}")
    out = check_out_path(out_dir)
    if not Path(tiled_dir).is_dir():
        raise FileFormatError(f"{tiled_dir}: no such folder (give the --out folder of `lrmil "
                              "tile`)")
    coords_dir = Path(tiled_dir) / "coords"
    coords_files = sorted(coords_dir.glob("*.h5"))
    if not coords_files:
        loose = sorted(Path(tiled_dir).glob("*.h5"))  # a CLAM / TRIDENT patches folder?
        foreign = foreign_coords(loose[0]) if loose else None
        if foreign:
            raise FileFormatError(f"{loose[0]}: {foreign}")
        raise FileFormatError(f"{coords_dir} holds no coords files: run `lrmil tile` first")
    ranks = Ranks.from_env(shard)  # a bad --shard is refused before the encoder is built
    device = rank_device(device, ranks.local_rank)
    if isinstance(encoder, str):
        encoder = build(encoder, weights=weights, seed=seed, model_kwargs=model_kwargs,
                        random_init=random_init)
    if list(layers) == ["default"]:
        layers = encoder.default_layers
    encoder.check_layers(layers)
    encoder.to(device).eval()
    out = check_out_dir(out)
    common = {
        "encoder": encoder.name,
        "encoder_digest": encoder_digest(encoder),
        "seed": seed,  # a built-in's initialisation (distill rebuilds the LR encoder from it)
        "weights": "" if weights is None else str(Path(weights).resolve()),
        "weights_sha256": "" if weights is None else file_sha256(weights),
        "random_init": random_init,
        "dim": encoder.dim,
        "dtype": dtype,
        "layers_dtype": layers_dtype,
        "lrmil_versions": json.dumps({**versions(), **library_versions(encoder.name)}),
    }
    job = EmbedJob(encoder, out, MAGS[mag], batch_size, workers, device, tuple(layers), dtype,
                   layers_dtype, overwrite, common)
    settings = {"tiled_dir": str(Path(tiled_dir).resolve()), "mag": mag,
                "batch_size": batch_size, "workers": workers, "device": device,
                "layers": list(layers), **{k: v for k, v in common.items()
                                           if k != "lrmil_versions"}}
    # Shares are balanced by coords file size: it grows with the patches, a slide's cost.
    return run_slides("embed", slide_items(coords_files), job, out, overwrite=overwrite,
                      progress=progress, settings=settings, shard=shard)


@dataclass
class EmbedJob:
    """The settings of one `embed_slides` call, applied slide by slide (a slide is one coords
    file, all its magnifications)."""

    encoder: Encoder
    out: Path
    mags: tuple[str, ...]
    batch_size: int
    workers: int
    device: str
    layers: tuple[str, ...]  # HR files only
    dtype: str
    layers_dtype: str  # of the HR files' layers/<name>
    overwrite: bool
    common_attrs: dict[str, Any]

    def existing(self, item: SlideItem) -> Existing:
        ts = read_coords(item.path)
        check_slide_unchanged(ts, item.path)
        for mag in self.mags:
            target = self.out / mag / f"{item.name}.h5"
            recorded = FileIdentity.recorded(read_attrs(target), "coords")
            if recorded is not None:
                current = all(self._current(ts, item, m) for m in self.mags)
                return Existing(str(target), recorded.path, current)
        return Existing()

    def work(self, item: SlideItem, bar: SlideProgress) -> Done:
        ts = read_coords(item.path)
        slide = check_slide_unchanged(ts, item.path)
        todo = [m for m in self.mags if self.overwrite or not self._current(ts, item, m)]
        patches = 0
        for mag in todo:
            coords, size0, parent, child = _patches(ts, mag)
            dataset = PatchDataset(slide, coords, size0, ts.patch_size, mpp=ts.level0_mpp)
            bar.start_slide(f"{item.name} {mag}", len(coords))
            try:
                feats, pooled = encode_dataset(
                    dataset,
                    self.encoder,
                    batch_size=self.batch_size,
                    workers=self.workers,
                    device=self.device,
                    layers=self.layers if mag == "hr" else (),
                    on_batch=bar.patches,
                )
            finally:
                dataset.close()
            what = f"{item.path} ({mag.upper()} patches, encoder {self.encoder.name})"
            check_storable(feats, what, self.dtype, "--dtype")
            for layer, values in pooled.items():
                check_storable(values, f"{what} layer {layer}", self.layers_dtype,
                               "--layers-dtype")
            attrs = self._attrs(ts, item, mag)
            feats_file = Features(feats, coords, parent, child, pooled, attrs)
            write_features(self.out / mag / f"{item.name}.h5", feats_file, dtype=self.dtype,
                           layers_dtype=self.layers_dtype)
            patches += len(coords)
        kept = [m for m in self.mags if m not in todo]
        return Done(patches, f"{', '.join(kept).upper()} features were current" if kept else "")

    def _current(self, ts: TiledSlide, item: SlideItem, mag: str) -> bool:
        existing = read_attrs(self.out / mag / f"{item.name}.h5")
        expected = self._attrs(ts, item, mag)
        coords = FileIdentity.of(item.path)
        return (bool(existing) and coords.matches(FileIdentity.recorded(existing, "coords"))
                and all(existing.get(k) == expected[k] for k in MATCH_KEYS))

    def _attrs(self, ts: TiledSlide, item: SlideItem, mag: str) -> dict[str, Any]:
        coords, size0, _, _ = _patches(ts, mag)
        return {
            **self.common_attrs,
            "magnification": ts.lr_mag if mag == "lr" else ts.hr_mag,
            "mag": mag,
            "patch_size": ts.patch_size,
            "patch_size_level0": size0,
            "r": ts.r,
            "slide_path": ts.slide_path,
            "slide_size": ts.slide_size,
            "slide_mtime": ts.slide_mtime,
            **FileIdentity.of(item.path).attrs("coords"),
            "n_patches": len(coords),
            "layers": json.dumps(list(self.layers if mag == "hr" else ())),
        }
