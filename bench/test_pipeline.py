"""End-to-end inference benchmarks (performance.md, Pipeline: "End to end" and "Engines").

Run: `.venv/bin/python -m pytest bench/test_pipeline.py -p no:cacheprovider
      --benchmark-json=bench/results/pipeline.json`
1. Per slide, from the slide file: LR-only inference (tissue mask -> LR grid -> encoder ->
   student MIL) vs the HR pipeline (same tiling, every valid 20x child read and encoded by the
   same built-in encoder, teacher MIL over them): wall-time ratio (target >= 10x) and
   patch-count ratio (~ r^2 = 16).
2. torch vs ONNX Runtime (and TensorRT where it runs) on the encoder and on the MIL head, the
   outputs compared before anything is timed.
Ratios go to bench/results/pipeline.md. The slide is generated once into $LRMIL_BENCH_DIR.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from lrmil.data.patches import PatchDataset
from lrmil.encoders import build
from lrmil.export import export_model
from lrmil.export.graphs import EncoderGraph, HeadGraph
from lrmil.export.sidecar import ModelMeta
from lrmil.export.tensorrt import require_tensorrt
from lrmil.infer.engines.onnx_engine import OnnxEngine
from lrmil.infer.engines.torch_engine import TorchEngine
from lrmil.infer.pipeline import predict_slide
from lrmil.mil import GatedABMIL
from lrmil.tiling import TilingConfig, tile_slide
from lrmil.wsi import open_slide

SIDE = int(os.environ.get("LRMIL_BENCH_PIPELINE_SIDE", "8192"))
CACHE = Path(os.environ.get("LRMIL_BENCH_DIR", "/tmp/lrmil_bench"))
ENCODER = "lrmil-cnn"
WORKERS = 2
BATCH = 32
RESULTS = Path(__file__).parent / "results" / "pipeline.md"
means: dict[str, float] = {}
notes: dict[str, str] = {}


@pytest.fixture(scope="module")
def slide() -> Path:
    from lrmil.synth import write_slide

    path = CACHE / f"pipeline_{SIDE}.svs"
    if not path.exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        write_slide(path, SIDE, SIDE, seed=5, label="positive", threads=os.cpu_count() or 1)
    return path


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    encoder = build(ENCODER)
    graph = EncoderGraph(encoder.preprocess, encoder.model).eval()
    student = HeadGraph(GatedABMIL(encoder.dim, 2).eval()).eval()
    teacher = HeadGraph(GatedABMIL(encoder.dim, 2).eval()).eval()
    meta = ModelMeta(encoder=ENCODER, feature_dim=encoder.dim, patch_size=256,
                     magnification=5.0, class_names=["negative", "positive"])
    return graph, student, teacher, meta


@pytest.fixture(scope="module")
def engines(model, tmp_path_factory):
    graph, student, _, meta = model
    out = tmp_path_factory.mktemp("export")
    export_model(graph, student, meta, out)
    found = {"torch": TorchEngine(graph, student, meta), "onnx": OnnxEngine(out)}
    try:
        require_tensorrt()
    except Exception:
        return found
    from lrmil.infer.engines.trt_engine import TrtEngine

    trt_dir = tmp_path_factory.mktemp("trt")
    export_model(graph, student, meta, trt_dir, fmt="trt", fp16=True)
    found["trt"] = TrtEngine(trt_dir)
    return found


def hr_pipeline(path: Path, encoder: EncoderGraph, teacher: HeadGraph,
                tiling: TilingConfig) -> tuple[np.ndarray, int]:
    """The HR baseline from the slide file: same tissue mask and grid, every valid 20x child
    read (DataLoader workers, as the LR path) and encoded, teacher MIL over all of them."""
    with open_slide(path) as s:
        tiles = tile_slide(s, tiling)
    children = tiles.hr_coords[tiles.hr_valid]
    patches = PatchDataset(path, children, tiles.geometry.hr_size0, tiling.patch_size)
    loader = DataLoader(patches, batch_size=BATCH, num_workers=WORKERS, prefetch_factor=4)
    with torch.inference_mode():
        features = torch.cat([encoder(b) for b, _ in loader])
        probs, _ = teacher(features)
    return probs.numpy(), len(children)


@pytest.fixture(scope="module", autouse=True)
def write_summary():
    yield
    if not means:
        return
    lines = [
        f"# Inference pipeline benchmark ({SIDE} x {SIDE} synthetic 20x slide, {ENCODER})",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, "
        f"{torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU'}; "
        f"torch {torch.__version__}; shared machine, timings noisy (mean of rounds); "
        f"{WORKERS} DataLoader workers, batch {BATCH}.",
        "",
        "| measurement | mean seconds | note |",
        "|---|---:|---|",
    ]
    lines += [f"| {k} | {v:.4f} | {notes.get(k, '')} |" for k, v in means.items()]
    if "LR-only inference" in means and "HR pipeline" in means:
        ratio = means["HR pipeline"] / means["LR-only inference"]
        lines += ["", f"**LR-only vs HR wall-time ratio: {ratio:.1f}x** (target >= 10x); "
                      f"{notes.get('patch ratio', '')}"]
    for part in ("encoder", "mil head"):
        base = means.get(f"torch {part}")
        for engine in ("onnx", "trt"):
            if base and f"{engine} {part}" in means:
                lines.append(f"- {part}: {engine} is {base / means[f'{engine} {part}']:.2f}x "
                             "torch's speed")
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text("\n".join(lines) + "\n")


@pytest.mark.benchmark(group="pipeline: one slide from the file")
def test_lr_only_inference(benchmark, slide, engines):
    tiling = TilingConfig(patch_size=256)
    engine = engines["torch"]
    pred = predict_slide(slide, engine, tiling, batch_size=BATCH, workers=WORKERS)
    assert len(pred.coords) > 0 and np.isclose(pred.attention.sum(), 1, atol=1e-5)
    benchmark.pedantic(predict_slide, args=(slide, engine, tiling),
                       kwargs={"batch_size": BATCH, "workers": WORKERS}, rounds=3)
    means["LR-only inference"] = benchmark.stats.stats.mean
    notes["LR-only inference"] = f"{len(pred.coords)} LR patches (5x)"


@pytest.mark.benchmark(group="pipeline: one slide from the file")
def test_hr_pipeline(benchmark, slide, model):
    graph, _, teacher, _ = model
    tiling = TilingConfig(patch_size=256)
    probs, n_hr = hr_pipeline(slide, graph, teacher, tiling)
    assert n_hr > 0 and np.isclose(probs.sum(), 1, atol=1e-5)
    benchmark.pedantic(hr_pipeline, args=(slide, graph, teacher, tiling), rounds=2)
    means["HR pipeline"] = benchmark.stats.stats.mean
    with open_slide(slide) as s:
        n_lr = len(tile_slide(s, tiling).coords)
    notes["HR pipeline"] = f"{n_hr} HR patches (20x)"
    notes["patch ratio"] = f"patch-count ratio {n_hr / n_lr:.1f}x ({n_hr} HR / {n_lr} LR)"


@pytest.mark.parametrize("name", ["torch", "onnx", "trt"])
@pytest.mark.benchmark(group="engines: encoder, 64 patches of 256 px")
def test_encoder_engine(benchmark, engines, name):
    if name not in engines:
        pytest.skip(f"{name} engine not available here")
    patches = torch.randint(0, 256, (64, 256, 256, 3), dtype=torch.uint8,
                            generator=torch.Generator().manual_seed(0))
    reference = engines["torch"].encode(patches).cpu()
    diff = float((engines[name].encode(patches).cpu() - reference).abs().max())
    assert diff < (5e-2 if name == "trt" else 1e-3), diff
    benchmark.pedantic(engines[name].encode, args=(patches,), rounds=5, warmup_rounds=1)
    means[f"{name} encoder"] = benchmark.stats.stats.mean
    notes[f"{name} encoder"] = f"max abs diff vs torch {diff:.1e}"


@pytest.mark.parametrize("name", ["torch", "onnx", "trt"])
@pytest.mark.benchmark(group="engines: MIL head, one bag of 4096 patches")
def test_head_engine(benchmark, engines, name):
    if name not in engines:
        pytest.skip(f"{name} engine not available here")
    dim = engines["torch"].meta.feature_dim
    features = torch.randn(4096, dim, generator=torch.Generator().manual_seed(0))
    p_ref, a_ref = engines["torch"].aggregate(features)
    probs, attn = engines[name].aggregate(features)
    diff = max(float((probs.cpu() - p_ref.cpu()).abs().max()),
               float((attn.cpu() - a_ref.cpu()).abs().max()))
    assert diff < (1e-2 if name == "trt" else 1e-5), diff
    benchmark.pedantic(engines[name].aggregate, args=(features,), rounds=20, warmup_rounds=2)
    means[f"{name} mil head"] = benchmark.stats.stats.mean
    notes[f"{name} mil head"] = f"max abs diff vs torch {diff:.1e}"
