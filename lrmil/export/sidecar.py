"""The JSON sidecar beside every exported artifact (`encoder.onnx.json`, `mil.plan.json`, ...).

It says what the artifact expects and where it came from: input/output names, dtypes and shape
ranges, the model's metadata (encoder, feature dim, patch size, class names), the versions that
made it and hashes of the weights and of the artifact. Loading checks it, so a stale, swapped
or foreign artifact is refused with a message that says what differs.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lrmil.errors import FileFormatError

# 2: the model's choice (final, fold, ensemble), the temperature inside the graph, the
# decision threshold. A version-1 sidecar (uncalibrated graphs) is refused with what to do.
SIDECAR_VERSION = 2
KINDS = ("encoder", "mil")
FORMATS = ("onnx", "trt")
_SUFFIX = {"onnx": ".onnx", "trt": ".plan"}


@dataclass
class ModelMeta:
    """What inference needs to know about the model besides its weights."""

    encoder: str  # encoder name (registry name or file)
    feature_dim: int  # D, the encoder's embedding size and the MIL head's input
    patch_size: int  # LR patch side in pixels at `magnification`
    magnification: float  # LR magnification the patches are read at
    class_names: list[str]
    source_sha256: str | None = None  # hash of the run's config, weights and calibration
    fold: int | None = None  # the fold of a fold's student (model "fold")
    extra: dict[str, Any] = field(default_factory=dict)  # e.g. tissue/tiling settings
    model: str = "final"  # "final" | "fold" | "ensemble" (the mean of `folds`' students)
    folds: list[int] = field(default_factory=list)  # the ensemble's members
    temperature: float = 1.0  # logits / T inside the MIL graph: its probabilities are calibrated
    threshold: float | None = None  # two classes: P(second class) >= threshold calls it

    def describe(self) -> str:
        """"the final model", "the student of fold 2", "the ensemble of folds 1, 2, 3"."""
        if self.model == "fold":
            return f"the student of fold {self.fold}"
        if self.model == "ensemble":
            return f"the ensemble of folds {', '.join(map(str, self.folds))}"
        return "the final model"


@dataclass
class TensorSpec:
    name: str
    dtype: str  # numpy name: "uint8", "float32", ...
    shape: list[int | str]  # a string names a dynamic axis
    min: list[int] | None = None  # shape range, inputs only
    opt: list[int] | None = None
    max: list[int] | None = None


@dataclass
class Sidecar:
    kind: str  # "encoder" | "mil"
    format: str  # "onnx" | "trt"
    artifact: str  # file name, beside the sidecar
    artifact_sha256: str
    weights_sha256: str
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    model: ModelMeta
    precision: str = "fp32"  # "fp32" | "fp16"
    exporter: str = "dynamo"  # "dynamo" | "torchscript" (+ why, in exporter_note)
    exporter_note: str | None = None
    max_abs_diff: dict[str, float] = field(default_factory=dict)  # export check vs torch
    versions: dict[str, str] = field(default_factory=dict)
    sidecar_version: int = SIDECAR_VERSION

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2)

    def input(self, name: str) -> TensorSpec:
        return next(s for s in self.inputs if s.name == name)


def artifact_path(export_dir: Path, kind: str, fmt: str) -> Path:
    """`EXPORT/encoder.onnx`, `EXPORT/mil.plan`, ..."""
    return Path(export_dir) / f"{kind}{_SUFFIX[fmt]}"


def sidecar_path(artifact: Path) -> Path:
    return artifact.with_name(artifact.name + ".json")


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_sidecar(artifact: Path) -> Sidecar:
    """Read the sidecar of `artifact`; a missing or malformed one is a FileFormatError."""
    path = sidecar_path(artifact)
    if not artifact.is_file():
        raise FileFormatError(f"{artifact}: exported artifact not found (run `lrmil export`)")
    if not path.is_file():
        raise FileFormatError(
            f"{artifact}: its sidecar {path.name} is missing; re-run `lrmil export`"
        )
    try:
        data = json.loads(path.read_text())
        found = data.get("sidecar_version")
        if found == 1:
            raise FileFormatError(f"{path}: sidecar version 1, an export from before "
                                  "calibration; re-run `lrmil export` (and `lrmil distill`, "
                                  "which resumes, for the final model and its calibration)")
        if found != SIDECAR_VERSION:
            raise FileFormatError(f"{path}: sidecar version {found!r}, this lrmil reads "
                                  f"{SIDECAR_VERSION}: re-run `lrmil export` with this lrmil")
        data["inputs"] = [TensorSpec(**s) for s in data["inputs"]]
        data["outputs"] = [TensorSpec(**s) for s in data["outputs"]]
        data["model"] = ModelMeta(**data["model"])
        sidecar = Sidecar(**data)
    except FileFormatError:
        raise
    except (ValueError, TypeError, KeyError) as exc:
        raise FileFormatError(f"{path}: not a valid lrmil sidecar ({exc})") from exc
    if sidecar.kind not in KINDS or sidecar.format not in FORMATS:
        raise FileFormatError(f"{path}: unknown kind/format {sidecar.kind}/{sidecar.format}")
    return sidecar


def check_sidecar(artifact: Path, kind: str, fmt: str, expected_versions: dict[str, str],
                  source_sha256: str | None = None) -> Sidecar:
    """Read and verify the sidecar of `artifact` against this installation.

    Refuses: a different artifact kind or format, an artifact whose bytes changed since export,
    any difference in `expected_versions` (lrmil always; TensorRT and the GPU for plans), and,
    when `source_sha256` is given, a run whose weights changed since the export.
    """
    sidecar = read_sidecar(artifact)
    if (sidecar.kind, sidecar.format) != (kind, fmt):
        raise FileFormatError(
            f"{artifact}: sidecar says {sidecar.kind}/{sidecar.format}, expected {kind}/{fmt}"
        )
    for key, want in expected_versions.items():
        have = sidecar.versions.get(key)
        if have != want:
            raise FileFormatError(
                f"{artifact}: exported with {key} {have}, this machine has {want}; "
                "re-run `lrmil export` here"
            )
    if file_sha256(artifact) != sidecar.artifact_sha256:
        raise FileFormatError(f"{artifact}: file does not match its sidecar (changed after export)")
    if source_sha256 is not None and sidecar.model.source_sha256 != source_sha256:
        raise FileFormatError(
            f"{artifact}: the run's weights changed since this export; re-run `lrmil export`"
        )
    return sidecar


def check_pair(encoder: Sidecar, mil: Sidecar) -> None:
    """The encoder and MIL artifacts must come from the same export of the same model."""
    if encoder.model != mil.model:
        raise FileFormatError(
            f"{encoder.artifact} and {mil.artifact} come from different models or exports "
            f"(encoder {encoder.model.encoder}, D={encoder.model.feature_dim} vs "
            f"D={mil.model.feature_dim}); re-run `lrmil export`"
        )
