"""Reading the model to export or run from a `lrmil distill` run folder."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lrmil import __version__
from lrmil.errors import FileFormatError
from lrmil.export.graphs import EncoderGraph, HeadGraph
from lrmil.export.sidecar import ModelMeta, file_sha256


@dataclass
class RunModel:
    encoder: EncoderGraph
    head: HeadGraph
    meta: ModelMeta


def run_sha256(run: Path) -> str:
    """sha256 over the run's config and every weights file (relative names and bytes): an export
    made from other weights is detected without loading any model."""
    digest = hashlib.sha256()
    for path in [run / "config.json", *sorted(run.rglob("*.safetensors"))]:
        digest.update(f"{path.relative_to(run)}|{file_sha256(path)}\n".encode())
    return digest.hexdigest()


def read_run_config(run: Path) -> dict[str, Any]:
    """RUN/config.json, refusing a missing folder or file and a run from another lrmil version
    (major.minor: a patch release keeps the weights format)."""
    if not run.is_dir():
        raise FileFormatError(f"run folder {run} does not exist")
    path = run / "config.json"
    if not path.is_file():
        raise FileFormatError(f"{run} is not an lrmil run: config.json is missing")
    try:
        config = json.loads(path.read_text())
    except ValueError as exc:
        raise FileFormatError(f"{path} is not valid JSON ({exc})") from exc
    made_by = str(config.get("versions", {}).get("lrmil", "unknown"))
    if made_by.split(".")[:2] != __version__.split(".")[:2]:
        raise FileFormatError(
            f"{run} was made by lrmil {made_by}; this is lrmil {__version__}: "
            "re-run `lrmil distill` with this version"
        )
    if not any(run.glob("fold_*/student.safetensors")):
        raise FileFormatError(f"{run} has no trained student (fold_*/student.safetensors missing)")
    return config


def load_run(run: str | Path, fold: int | None = None) -> RunModel:
    """The student's LR encoder and MIL head as exportable graphs, with their metadata."""
    from lrmil.distill import load_student

    run = Path(run)
    read_run_config(run)
    encoder, mil, config = load_student(run, fold)
    meta = ModelMeta(
        encoder=encoder.name,
        feature_dim=int(encoder.dim),
        patch_size=int(_setting(config, run, "patch_size")),
        magnification=float(_setting(config, run, "lr_magnification")),
        class_names=[str(c) for c in _setting(config, run, "class_names")],
        source_sha256=run_sha256(run),
        fold=fold,
        extra={"tiling": config.get("tiling", {})},
    )
    graph = EncoderGraph(encoder.preprocess, encoder.model).eval()
    return RunModel(graph, HeadGraph(mil).eval(), meta)


def _setting(config: dict[str, Any], run: Path, key: str) -> Any:
    if key not in config:
        raise FileFormatError(f"{run}/config.json lacks '{key}'; re-run `lrmil distill`")
    return config[key]
