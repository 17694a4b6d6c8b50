"""`embed_slides`: encode the LR and/or HR patches of tiled slides into features files.

For each coords file `TILED/coords/<slide>.h5` and magnification, patches are read from the
slide on the fly by a DataLoader (each worker with its own slide handle), encoded in batches
under `torch.inference_mode` (autocast on a GPU where the encoder prefers it) and written
atomically to `OUT/{lr,hr}/<slide>.h5`. Outputs that are complete and match their inputs (coords
file, slide, encoder weights, settings) are skipped; a failing slide is recorded in
`OUT/errors.csv` and the others go on.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from lrmil.data.features import Features, read_attrs, write_features
from lrmil.data.patches import PatchDataset
from lrmil.encoders import Encoder, build
from lrmil.errors import ConfigError, FileFormatError
from lrmil.info import versions
from lrmil.tiling import TiledSlide, read_coords
from lrmil.utils.atomic import atomic_write_text
from lrmil.utils.progress import SlideProgress

MAGS = {"lr": ("lr",), "hr": ("hr",), "both": ("lr", "hr")}
# Attrs that must match for an existing features file to be reused.
MATCH_KEYS = (
    "encoder",
    "encoder_digest",
    "coords_path",
    "coords_mtime",
    "slide_size",
    "slide_mtime",
    "patch_size",
    "dtype",
    "layers",
    "n_patches",
)


@dataclass
class SlideResult:
    slide: str
    mag: str
    status: str  # "ok", "skipped" or "failed"
    patches: int = 0
    seconds: float = 0.0
    error: str = ""


@dataclass
class EmbedSummary:
    out_dir: Path
    results: list[SlideResult] = field(default_factory=list)
    seconds: float = 0.0

    def count(self, status: str) -> int:
        return sum(r.status == status for r in self.results)

    @property
    def patches(self) -> int:
        return sum(r.patches for r in self.results if r.status == "ok")

    @property
    def patches_per_second(self) -> float:
        busy = sum(r.seconds for r in self.results if r.status == "ok")
        return self.patches / busy if busy else 0.0


def encoder_digest(encoder: Encoder) -> str:
    """A short hash of the encoder's weights: resume re-encodes when they change."""
    h = hashlib.blake2b(encoder.name.encode(), digest_size=8)
    for key, value in encoder.model.state_dict().items():
        h.update(key.encode())
        h.update(value.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def check_slide_unchanged(ts: TiledSlide, coords_path: Path) -> Path:
    """The slide the coords were made from; FileFormatError if it is missing or differs."""
    slide = Path(ts.slide_path)
    if not slide.is_file():
        raise FileFormatError(f"coords file {coords_path}: slide {slide} does not exist")
    stat = slide.stat()
    if stat.st_size != ts.slide_size or abs(stat.st_mtime - ts.slide_mtime) > 1e-3:
        raise FileFormatError(
            f"coords file {coords_path} was made from another version of {slide} "
            f"(size {ts.slide_size}, mtime {ts.slide_mtime:.0f}; "
            f"now {stat.st_size}, {stat.st_mtime:.0f}): tile it again"
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
    batch_size: int = 64,
    workers: int = 0,
    device: str = "cpu",
    layers: Sequence[str] = (),
    dtype: str = "float32",
    overwrite: bool = False,
    progress: bool = False,
) -> EmbedSummary:
    """Encode every tiled slide of `tiled_dir` (its `coords/*.h5`) at `mag` ("lr", "hr" or
    "both") into `out_dir/{lr,hr}/<slide>.h5`. `encoder` is a registry name (built with
    `weights`, `seed`, `model_kwargs`) or a built Encoder. `layers` (or ["default"]: the
    encoder's default_layers) adds the per-layer pooled embeddings to HR files (`layers/<name>`,
    the stage-1 teacher targets)."""
    if mag not in MAGS:
        raise ConfigError(f"--mag must be one of {', '.join(MAGS)}, got {mag!r}")
    if batch_size < 1 or workers < 0:
        raise ConfigError(
            f"batch size must be >= 1 and workers >= 0, got {batch_size} and {workers}"
        )
    coords_dir = Path(tiled_dir) / "coords"
    coords_files = sorted(coords_dir.glob("*.h5"))
    if not coords_files:
        raise FileFormatError(f"{coords_dir} holds no coords files: run `lrmil tile` first")
    if isinstance(encoder, str):
        encoder = build(encoder, weights=weights, seed=seed, model_kwargs=model_kwargs)
    if list(layers) == ["default"]:
        layers = encoder.default_layers
    encoder.check_layers(layers)
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device {device} requested but torch sees no CUDA device")
    encoder.to(device).eval()
    run = _Run(
        encoder,
        Path(out_dir),
        batch_size,
        workers,
        device,
        tuple(layers),
        dtype,
        overwrite,
        common_attrs={
            "encoder": encoder.name,
            "encoder_digest": encoder_digest(encoder),
            "seed": seed,  # a built-in's initialisation (distill rebuilds the LR encoder from it)
            "weights": "" if weights is None else str(Path(weights).resolve()),
            "dim": encoder.dim,
            "dtype": dtype,
            "lrmil_versions": json.dumps(versions()),
        },
    )
    summary = EmbedSummary(run.out)
    start = time.perf_counter()
    with SlideProgress(progress, len(coords_files) * len(MAGS[mag])) as bar:
        for coords_path in coords_files:
            for m in MAGS[mag]:
                summary.results.append(run.slide(coords_path, m, bar))
                bar.slide_done()
    summary.seconds = time.perf_counter() - start
    _write_errors(run.out, summary)
    return summary


@dataclass
class _Run:
    """The settings of one `embed_slides` call, applied slide by slide."""

    encoder: Encoder
    out: Path
    batch_size: int
    workers: int
    device: str
    layers: tuple[str, ...]  # HR files only
    dtype: str
    overwrite: bool
    common_attrs: dict[str, Any]

    def slide(self, coords_path: Path, mag: str, bar: SlideProgress) -> SlideResult:
        name = coords_path.stem
        start = time.perf_counter()
        try:
            ts = read_coords(coords_path)
            slide = check_slide_unchanged(ts, coords_path)
            coords, size0, parent, child = _patches(ts, mag)
            layers = self.layers if mag == "hr" else ()
            attrs = {
                **self.common_attrs,
                "magnification": ts.lr_mag if mag == "lr" else ts.hr_mag,
                "mag": mag,
                "patch_size": ts.patch_size,
                "patch_size_level0": size0,
                "r": ts.r,
                "slide_path": str(slide),
                "slide_size": ts.slide_size,
                "slide_mtime": ts.slide_mtime,
                "coords_path": str(coords_path.resolve()),
                "coords_mtime": coords_path.stat().st_mtime,
                "n_patches": len(coords),
                "layers": json.dumps(list(layers)),
            }
            target = self.out / mag / f"{name}.h5"
            if not self.overwrite and _matches(target, attrs):
                return SlideResult(name, mag, "skipped", len(coords))
            dataset = PatchDataset(slide, coords, size0, ts.patch_size, mpp=ts.level0_mpp)
            bar.start_slide(f"{name} {mag}", len(coords))
            try:
                feats, pooled = encode_dataset(
                    dataset,
                    self.encoder,
                    batch_size=self.batch_size,
                    workers=self.workers,
                    device=self.device,
                    layers=layers,
                    on_batch=bar.patches,
                )
            finally:
                dataset.close()
            feats_file = Features(feats, coords, parent, child, pooled, attrs)
            write_features(target, feats_file, dtype=self.dtype)
            return SlideResult(name, mag, "ok", len(coords), time.perf_counter() - start)
        except Exception as exc:  # one bad slide must not stop the others; it is reported
            error = f"{type(exc).__name__}: {exc}"
            return SlideResult(
                name, mag, "failed", seconds=time.perf_counter() - start, error=error
            )


def _matches(target: Path, attrs: dict[str, Any]) -> bool:
    existing = read_attrs(target)
    return bool(existing) and all(existing.get(k) == attrs[k] for k in MATCH_KEYS)


def _write_errors(out: Path, summary: EmbedSummary) -> None:
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["slide", "mag", "error"])
    writer.writerows([r.slide, r.mag, r.error] for r in summary.results if r.status == "failed")
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "errors.csv", buf.getvalue())
