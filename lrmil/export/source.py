"""Reading the model to export or run from a `lrmil distill` run folder."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lrmil import __version__
from lrmil.distill.layout import RunLayout
from lrmil.errors import ConfigError, FileFormatError
from lrmil.export.graphs import EncoderGraph, EnsembleEncoder, EnsembleHead, HeadGraph
from lrmil.export.sidecar import ModelMeta, file_sha256


@dataclass
class RunModel:
    encoder: EncoderGraph | EnsembleEncoder
    head: HeadGraph | EnsembleHead
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
        problem = "is a file, not a folder" if run.exists() else "does not exist"
        raise FileFormatError(f"run folder {run} {problem} (give the --out folder of `lrmil "
                              "distill`)")
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
    if not any(f.model("student").is_file() for f in [layout.final, *layout.folds()]):
        raise FileFormatError(f"{run} has no trained student (final/ and fold_*/ hold no "
                              "student.safetensors)")
    return config


def load_run(run: str | Path, fold: int | None = None, ensemble: bool = False) -> RunModel:
    """The LR encoder and MIL head of the final model (default), of fold `fold`'s student, or
    of the mean of every fold's student (`ensemble`), as exportable graphs with their metadata:
    the calibration's temperature inside the head and its threshold in the metadata."""
    import lrmil.distill as distill
    from lrmil.distill.calibration import read_calibration

    run = Path(run)
    if ensemble and fold is not None:
        raise ConfigError("give --fold K or --ensemble, not both")
    config = read_run_config(run)
    if "class_names" not in config:
        raise FileFormatError(f"{run}/config.json lacks the class names; re-run `lrmil distill`")
    calibration = read_calibration(RunLayout(run))
    temperature = calibration.temperature if calibration else 1.0
    threshold = calibration.threshold if calibration else None
    if ensemble:
        from lrmil.distill.models import fold_students

        folds = fold_students(run)
        if len(folds) < 2:
            raise FileFormatError(f"{run} has {len(folds)} fold student(s): an ensemble needs 2+")
        members = [distill.load_student(run, k) for k in folds]
        encoder, head = ensemble_graphs(members, config, temperature)
        first = members[0][0]
        name, dim, choice = first.name, _width(members, config), "ensemble"
    else:
        student, mil, _ = distill.load_student(run, fold)
        encoder = EncoderGraph(student.preprocess, student.model)
        head = HeadGraph(mil, temperature)
        name, dim, folds = student.name, int(student.dim), []
        choice = "final" if fold is None else "fold"
    patch_size, magnification, tiling = lr_settings(config, run)
    meta = ModelMeta(
        encoder=name, feature_dim=dim, patch_size=patch_size, magnification=magnification,
        class_names=[str(c) for c in config["class_names"]], source_sha256=run_sha256(run),
        fold=fold, extra={"tiling": tiling}, model=choice, folds=folds,
        temperature=float(temperature), threshold=threshold,
    )
    return RunModel(encoder.eval(), head.eval(), meta)


def ensemble_graphs(members: list[tuple[Any, Any, Any]], config: dict[str, Any],
                    temperature: float) -> tuple[EnsembleEncoder, EnsembleHead]:
    """The fold students as one encoder and one head. What runs once depends on stage 1:
    without it every fold reads the same LR features (the encoder runs once); in adapter mode
    the LR encoder is shared and each fold adds its adapter (a small MLP); in encoder mode
    every fold distilled its own LR encoder, so each runs (k times the encoder's cost)."""
    import torch

    from lrmil.distill.models import stage1_sharing

    sharing = stage1_sharing(config)
    encoders = [encoder for encoder, _, _ in members]
    mils = [mil for _, mil, _ in members]
    preprocess = encoders[0].preprocess
    if sharing == "none":
        width = int(encoders[0].dim)
        return (EnsembleEncoder(preprocess, encoders[0].model, [torch.nn.Identity()]),
                EnsembleHead(mils, [(0, width)] * len(mils), temperature))
    if sharing == "adapter":  # Sequential(LR encoder, adapter): the LR encoder is the same
        shared, branches = encoders[0].model[0], [e.model[1] for e in encoders]
    else:
        shared, branches = torch.nn.Identity(), [e.model for e in encoders]
    bounds = [0]
    for e in encoders:
        bounds.append(bounds[-1] + int(e.dim))
    return (EnsembleEncoder(preprocess, shared, branches),
            EnsembleHead(mils, list(zip(bounds[:-1], bounds[1:], strict=True)), temperature))


def _width(members: list[tuple[Any, Any, Any]], config: dict[str, Any]) -> int:
    """The ensemble encoder's output width."""
    from lrmil.distill.models import stage1_sharing

    if stage1_sharing(config) == "none":
        return int(members[0][0].dim)
    return sum(int(e.dim) for e, _, _ in members)


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
