"""`lrmil export`: the encoder and the MIL head to ONNX (and TensorRT plans), with sidecars."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from lrmil.errors import ConfigError
from lrmil.export.graphs import (
    ENCODER_INPUT,
    ENCODER_OUTPUT,
    HEAD_INPUT,
    HEAD_OUTPUTS,
    EncoderGraph,
    HeadGraph,
    weights_sha256,
)
from lrmil.export.onnx_export import OnnxExport, export_onnx
from lrmil.export.sidecar import (
    ModelMeta,
    Sidecar,
    TensorSpec,
    artifact_path,
    file_sha256,
    sidecar_path,
)
from lrmil.export.tensorrt import ShapeRange, build_plan, environment_versions
from lrmil.utils.atomic import atomic_write_text
from lrmil.utils.paths import check_out_path

DEFAULT_BATCH = ShapeRange(1, 64, 256)  # encoder patches per call
DEFAULT_BAG = ShapeRange(1, 2048, 65536)  # LR patches per slide (1/16 of an HR bag)
INPUT_DTYPES = ("uint8", "float32")


def export_run(run: str | Path, out_dir: str | Path | None = None, fmt: str = "onnx",
               fp16: bool = False, fold: int | None = None, batch: ShapeRange = DEFAULT_BATCH,
               bag: ShapeRange = DEFAULT_BAG, input_dtype: str = "uint8",
               ensemble: bool = False) -> dict[str, Path]:
    """Export the final model of `run` (default, into RUN/export), fold `fold`'s student
    (RUN/export_fold_<k>) or the mean of the fold students (`ensemble`, RUN/export_ensemble);
    update RUN/MODEL_CARD.md; return {kind: artifact path}."""
    from lrmil.distill.layout import RunLayout
    from lrmil.distill.model_card import write_model_card
    from lrmil.export.source import load_run, read_run_config

    _check_options(fmt, fp16)
    read_run_config(Path(run))  # the run first: its default --out lies inside it
    default = RunLayout(Path(run)).export_dir(fold, ensemble)
    out = check_out_path(Path(out_dir) if out_dir is not None else default)
    if fmt == "trt":
        environment_versions()  # say what is missing before loading anything
    model = load_run(run, fold, ensemble)
    layout = RunLayout(Path(run))
    artifacts = export_model(model.encoder, model.head, model.meta, out, fmt, fp16, batch, bag,
                             input_dtype)
    if layout.config.is_file():
        write_model_card(layout.root)
    return artifacts


def export_model(encoder: EncoderGraph, head: HeadGraph, meta: ModelMeta, out_dir: Path,
                 fmt: str = "onnx", fp16: bool = False, batch: ShapeRange = DEFAULT_BATCH,
                 bag: ShapeRange = DEFAULT_BAG, input_dtype: str = "uint8",
                 seed: int = 0) -> dict[str, Path]:
    """ONNX graphs (always: TensorRT builds from them) and, for fmt="trt", plans; each with its
    sidecar. Every ONNX graph is checked against torch before it is written."""
    _check_options(fmt, fp16)
    if input_dtype not in INPUT_DTYPES:
        raise ConfigError(f"input dtype must be one of {INPUT_DTYPES}, got {input_dtype!r}")
    trt_versions = environment_versions() if fmt == "trt" else {}  # fail before exporting
    out_dir.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(seed)
    p, d = meta.patch_size, meta.feature_dim
    dtype = getattr(torch, input_dtype)

    def patches(n: int) -> torch.Tensor:
        return torch.randint(0, 256, (n, p, p, 3), generator=gen, dtype=torch.uint8).to(dtype)

    def bags(n: int) -> torch.Tensor:
        return torch.randn(n, d, generator=gen)

    n_classes = len(meta.class_names)
    specs = {
        "encoder": (encoder, ENCODER_INPUT, "batch", patches(2), [patches(1), patches(3)], batch,
                    (p, p, 3), input_dtype, [TensorSpec(ENCODER_OUTPUT, "float32", ["batch", d])]),
        "mil": (head, HEAD_INPUT, "n", bags(5), [bags(1), bags(17), bags(300)], bag, (d,),
                "float32", [TensorSpec(HEAD_OUTPUTS[0], "float32", [n_classes]),
                            TensorSpec(HEAD_OUTPUTS[1], "float32", ["n"])]),
    }
    artifacts = {}
    for kind, spec in specs.items():
        module, name, axis, example, checks, rng, fixed, in_dtype, out_specs = spec
        outputs = [s.name for s in out_specs]
        onnx_path = artifact_path(out_dir, kind, "onnx")
        result = export_onnx(module, example, onnx_path, name, outputs, axis, checks)
        weights = weights_sha256(module)
        in_spec = TensorSpec(name, in_dtype, [axis, *fixed], [1, *fixed])
        _write_sidecar(onnx_path, kind, "onnx", weights, in_spec, out_specs, meta, result, {})
        artifacts[kind] = onnx_path
        if fmt == "trt":
            plan = artifact_path(out_dir, kind, "trt")
            build_plan(onnx_path, plan, name, rng, fixed, fp16)
            spec = TensorSpec(name, in_dtype, [axis, *fixed], [rng.min, *fixed],
                              [rng.opt, *fixed], [rng.max, *fixed])
            _write_sidecar(plan, kind, "trt", weights, spec, out_specs, meta, result,
                           trt_versions, precision="fp16" if fp16 else "fp32")
            artifacts[kind] = plan
    return artifacts


def _check_options(fmt: str, fp16: bool) -> None:
    if fmt not in ("onnx", "trt"):
        raise ConfigError(f"--format must be onnx or trt, got {fmt!r}")
    if fp16 and fmt != "trt":
        raise ConfigError("--fp16 applies to --format trt (ONNX graphs are exported in fp32)")


def _write_sidecar(artifact: Path, kind: str, fmt: str, weights: str, in_spec: TensorSpec,
                   out_specs: list[TensorSpec], meta: ModelMeta, result: OnnxExport,
                   extra_versions: dict[str, str], precision: str = "fp32") -> None:
    sidecar = Sidecar(
        kind=kind, format=fmt, artifact=artifact.name, artifact_sha256=file_sha256(artifact),
        weights_sha256=weights, inputs=[in_spec], outputs=out_specs,
        model=dataclasses.replace(meta), precision=precision, exporter=result.exporter,
        exporter_note=result.note, max_abs_diff=result.max_abs_diff,
        versions={**_versions(), **extra_versions},
    )
    atomic_write_text(sidecar_path(artifact), sidecar.to_json())


def _versions() -> dict[str, str]:
    import onnx
    import onnxruntime

    from lrmil.info import versions

    return {**versions(), "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__}
