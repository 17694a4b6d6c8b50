"""Reading the model to export or run from a `lrmil distill` run folder."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lrmil import __version__
from lrmil.distill.layout import RunLayout
from lrmil.errors import FileFormatError
from lrmil.export.graphs import EncoderGraph, HeadGraph
from lrmil.export.sidecar import ModelMeta, file_sha256


@dataclass
class RunModel:
    encoder: EncoderGraph
    head: HeadGraph
    meta: ModelMeta


def run_sha256(run: Path) -> str:
    """sha256 over the run's config and the students' weights files (relative names and bytes):
    an export made from other weights is detected without loading any model."""
    layout = RunLayout(run)
    digest = hashlib.sha256()
    for path in [layout.config, *layout.student_files()]:
        digest.update(f"{path.relative_to(run)}|{file_sha256(path)}\n".encode())
    return digest.hexdigest()


def read_run_config(run: Path) -> dict[str, Any]:
    """RUN/config.json, refusing a missing folder or file and a run from another lrmil version
    (major.minor: a patch release keeps the weights format)."""
    if not run.is_dir():
        raise FileFormatError(f"run folder {run} does not exist")
    layout = RunLayout(run)
    path = layout.config
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
    if not any(fold.model("student").is_file() for fold in layout.folds()):
        raise FileFormatError(f"{run} has no trained student (fold_*/student.safetensors missing)")
    return config


def load_run(run: str | Path, fold: int | None = None) -> RunModel:
    """The student's LR encoder and MIL head as exportable graphs, with their metadata."""
    from lrmil.distill import load_student

    run = Path(run)
    read_run_config(run)
    encoder, mil, config = load_student(run, fold)
    if "class_names" not in config:
        raise FileFormatError(f"{run}/config.json lacks the class names; re-run `lrmil distill`")
    patch_size, magnification, tiling = lr_settings(config, run)
    meta = ModelMeta(
        encoder=encoder.name,
        feature_dim=int(encoder.dim),
        patch_size=patch_size,
        magnification=magnification,
        class_names=[str(c) for c in config["class_names"]],
        source_sha256=run_sha256(run),
        fold=fold,
        extra={"tiling": tiling},
    )
    graph = EncoderGraph(encoder.preprocess, encoder.model).eval()
    return RunModel(graph, HeadGraph(mil).eval(), meta)


def lr_settings(config: dict[str, Any], run: Path) -> tuple[int, float, dict[str, Any]]:
    """(LR patch size, LR magnification, tiling settings) the student was trained on: from the
    run's config when it records them, else from its LR features files and their coords files
    (so inference tiles slides exactly as training did)."""
    if "patch_size" in config and "lr_magnification" in config:
        tiling = config.get("tiling", {})
        return int(config["patch_size"]), float(config["lr_magnification"]), tiling
    from lrmil.data.features import read_attrs
    from lrmil.tiling.coords_io import read_coords

    files = sorted((Path(config.get("features", "")) / "lr").glob("*.h5"))
    attrs = read_attrs(files[0]) if files else {}
    if "patch_size" not in attrs or "magnification" not in attrs:
        raise FileFormatError(
            f"{run}/config.json does not record the LR patch size and magnification, and the "
            f"run's LR features ({config.get('features') or '?'}/lr) cannot tell them"
        )
    coords = Path(str(attrs.get("coords_path", "")))
    tiling = read_coords(coords).config.to_dict() if coords.is_file() else {}
    return int(attrs["patch_size"]), float(attrs["magnification"]), tiling
