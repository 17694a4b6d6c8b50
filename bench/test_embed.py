"""Embedding benchmarks (performance.md, Pipeline: "patches/s for a given encoder with N
DataLoader workers vs 0 workers").

Run: `.venv/bin/python -m pytest bench/test_embed.py -p no:cacheprovider
      --benchmark-json=bench/results/embed.json`
A synthetic cohort (4 slides, 4096 x 4096 at 20x) is generated once into $LRMIL_BENCH_DIR
(default /tmp/lrmil_bench) and tiled at 256 px; the summary goes to bench/results/embed.md.
Correctness (workers do not change the features) is asserted before timing.

What a cohort costs (slow, minutes: `nice -n 10 .venv/bin/python -m pytest bench/test_embed.py
-m slow -p no:cacheprovider`): the real ViT-B/16 (timm) and ResNet-50 (torchvision) encoding
224 and 256 px patches, and stage 1's encoder-mode training step with ViT-B/16, contenders
interleaved round by round (bench/conftest.py `interleaved`), medians. Rows measured by a run
replace their own lines in embed.md; the others are kept.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import interleaved

from lrmil.data import PatchDataset
from lrmil.embed import encode_dataset
from lrmil.encoders import build
from lrmil.tiling import TilingConfig, read_coords, tile_slides

CACHE = Path(os.environ.get("LRMIL_BENCH_DIR", "/tmp/lrmil_bench")) / "embed_cohort"
N_PATCHES = 64  # patches per timed round
RESULTS = Path(__file__).parent / "results" / "embed.md"
rows: dict[str, str] = {}


@pytest.fixture(scope="module")
def tiled() -> Path:
    from lrmil.synth import make_cohort

    if not (CACHE / "labels.csv").exists():
        make_cohort(CACHE, n_slides=4, seed=0, width=4096, height=4096, workers=2)
    out = CACHE / "tiled"
    summary = tile_slides([CACHE / "slides"], out, TilingConfig())
    assert summary.failed == 0
    return out


def _table(text: str) -> dict[str, str]:
    """The `| measurement | result |` rows of an embed.md."""
    cells = [line.strip("|").split(" | ") for line in text.splitlines() if line.startswith("| ")]
    return {c[0].strip(): c[1].strip() for c in cells[1:] if len(c) == 2}


@pytest.fixture(scope="module", autouse=True)
def write_summary():
    yield
    if not rows:
        return
    kept = _table(RESULTS.read_text()) if RESULTS.is_file() else {}
    lines = [
        "# Embedding benchmark (synthetic cohort, 4 slides 4096 x 4096 at 20x, 256 px patches)",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, torch "
        f"{torch.__version__}, {torch.get_num_threads()} threads; shared machine, noisy.",
        "",
        "| measurement | result |",
        "|---|---|",
    ]
    lines += [f"| {label} | {value} |" for label, value in {**kept, **rows}.items()]
    RESULTS.write_text("\n".join(lines) + "\n")


def _dataset(tiled: Path, mag: str) -> PatchDataset:
    """The first N_PATCHES patches at `mag` over the cohort's first slide(s)."""
    coords_file = sorted((tiled / "coords").glob("*.h5"))[0]
    ts = read_coords(coords_file)
    if mag == "lr":
        coords, size0 = ts.coords, ts.lr_patch_size_level0
    else:
        coords, size0 = ts.hr_coords[ts.hr_valid], ts.hr_patch_size_level0
    coords = np.resize(coords, (N_PATCHES, 2))
    return PatchDataset(ts.slide_path, coords, size0, ts.patch_size, mpp=ts.level0_mpp)


def test_hr_lr_patch_ratio(tiled):
    n_lr = n_hr = 0
    for path in sorted((tiled / "coords").glob("*.h5")):
        ts = read_coords(path)
        n_lr += len(ts)
        n_hr += int(ts.hr_valid.sum())
    assert n_lr > 0 and n_lr < n_hr <= 16 * n_lr
    rows["HR / LR patches to encode (valid children / LR patches)"] = (
        f"{n_hr} / {n_lr} = {n_hr / n_lr:.1f}x (r^2 = 16 at most)"
    )


@pytest.mark.benchmark(group="embed: read + encode 64 patches, 0 workers")
@pytest.mark.parametrize("mag", ["lr", "hr"])
@pytest.mark.parametrize("name", ["lrmil-cnn", "lrmil-vit-tiny", "read only"])
def test_patches_per_second(benchmark, tiled, name, mag):
    dataset = _dataset(tiled, mag)
    if name == "read only":

        def run():
            return [dataset[i] for i in range(len(dataset))]

    else:
        encoder = build(name)

        def run():
            return encode_dataset(dataset, encoder, batch_size=32)

    run()
    benchmark.pedantic(run, rounds=3)
    rate = N_PATCHES / benchmark.stats.stats.mean
    rows[f"{name}, {mag.upper()} 256 px, 0 workers"] = f"{rate:,.0f} patches/s"


@pytest.mark.benchmark(group="embed: lrmil-cnn LR, workers")
@pytest.mark.parametrize("workers", [0, 2])
def test_workers(benchmark, tiled, workers):
    dataset = _dataset(tiled, "lr")
    encoder = build("lrmil-cnn")
    reference, _ = encode_dataset(dataset, encoder, batch_size=16)
    features, _ = encode_dataset(dataset, encoder, batch_size=16, workers=workers)
    assert np.array_equal(features, reference)
    benchmark.pedantic(
        encode_dataset,
        args=(dataset, encoder),
        kwargs={"batch_size": 16, "workers": workers},
        rounds=3,
    )
    rate = N_PATCHES / benchmark.stats.stats.mean
    rows[f"lrmil-cnn, LR 256 px, {workers} workers"] = f"{rate:,.0f} patches/s"


# ---- what a cohort costs: the real foundation-model architectures ----

BATCH = 4  # patches per call (small: the machine is shared, a round costs seconds)


def _random_patches(n: int, side: int, seed: int = 0) -> torch.Tensor:
    """uint8 (n, side, side, 3): the encoders' cost does not depend on the pixels."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, side, side, 3), dtype=torch.uint8, generator=generator)


def _rate(timing, n: int) -> str:
    return (f"{n / timing.median:.1f} patches/s (IQR {n / timing.q3:.1f}-{n / timing.q1:.1f}; "
            f"{timing.rounds} rounds, load {timing.load:.1f})")


@pytest.mark.slow
def test_foundation_encoders_patches_per_second():
    """Encode only (preprocess + forward, batches of 16 in memory): reading patches from the
    slide runs at >200 patches/s above, far from these rates."""
    contenders = {}
    for name in ("timm:vit_base_patch16_224", "torchvision:resnet50"):
        encoder = build(name, random_init=True)  # the cost does not depend on the weights
        for side in (224, 256):
            x = _random_patches(BATCH, side)
            contenders[f"{name}, {side} px"] = lambda encoder=encoder, x=x: encoder.encode(x)
    for label, timing in interleaved(contenders, rounds=3).items():
        rows[f"{label}, encode, batch {BATCH}"] = _rate(timing, BATCH)


@pytest.mark.slow
def test_stage1_encoder_mode_training_rate():
    """One stage-1 step of encoder mode as lrmil.distill.stage1 takes it (forward_features with
    two layers, L_attn + L_layer, backward, clip, AdamW), ViT-B/16 on 256 px LR patches."""
    from lrmil.distill.config import Stage1Config
    from lrmil.distill.stage1 import _optimise, _step
    from lrmil.ops import block_mse, child_mse

    encoder = build("timm:vit_base_patch16_224", random_init=True)
    layers, r, side, k = ["block6", "block12"], 4, 256, 16
    model = encoder.model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    s1 = Stage1Config()
    optimizer, schedule = _optimise(params, s1, steps=100)
    x = _random_patches(BATCH, side)
    generator = torch.Generator().manual_seed(1)
    t = torch.randn(BATCH, k, encoder.dim, generator=generator)
    weight, valid = torch.rand(BATCH, k, generator=generator), torch.ones(BATCH, k, dtype=bool)
    t_layers = {n: torch.randn(BATCH, k, encoder.layer_dims[n], generator=generator)
                for n in layers}

    def step():
        s, grids, _ = encoder.forward_features(encoder.preprocess(x), layers)
        loss = s1.lambda_attn * child_mse(s, t, weight) + s1.lambda_layer * torch.stack(
            [block_mse(grids[n], t_layers[n], valid, r) for n in layers]).mean(0)
        _step(loss.mean(), params, s1, optimizer, schedule)

    timing = interleaved({"step": step}, rounds=3)["step"]
    rows[f"stage 1 encoder mode, timm:vit_base_patch16_224, {side} px LR, train step, batch "
         f"{BATCH}"] = _rate(timing, BATCH)
