"""ONNX Runtime engine on the exported graphs: CUDA execution provider where present, else CPU."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from lrmil import __version__
from lrmil.errors import EnvironmentMissingError
from lrmil.export.graphs import ENCODER_INPUT, ENCODER_OUTPUT, HEAD_INPUT, HEAD_OUTPUTS
from lrmil.export.sidecar import artifact_path, check_pair, check_sidecar


def providers() -> list[str]:
    import onnxruntime as ort

    available = ort.get_available_providers()
    return [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]


class OnnxEngine:
    name = "onnx"

    def __init__(self, export_dir: Path, source_sha256: str | None = None) -> None:
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise EnvironmentMissingError(
                "ONNX Runtime is not installed (pip install onnxruntime); use --engine torch"
            ) from exc
        versions = {"lrmil": __version__}
        paths = {k: artifact_path(export_dir, k, "onnx") for k in ("encoder", "mil")}
        sidecars = {k: check_sidecar(p, k, "onnx", versions, source_sha256)
                    for k, p in paths.items()}
        check_pair(sidecars["encoder"], sidecars["mil"])
        self.meta = sidecars["mil"].model
        self.providers = providers()
        self._input_dtype = np.dtype(sidecars["encoder"].input(ENCODER_INPUT).dtype)
        self._encoder = ort.InferenceSession(str(paths["encoder"]), providers=self.providers)
        self._head = ort.InferenceSession(str(paths["mil"]), providers=self.providers)
        self.device = torch.device("cpu")  # ORT takes host arrays and copies them itself

    def encode(self, patches: torch.Tensor) -> torch.Tensor:
        x = patches.cpu().numpy().astype(self._input_dtype, copy=False)
        (embeddings,) = self._encoder.run([ENCODER_OUTPUT], {ENCODER_INPUT: x})
        return torch.from_numpy(embeddings).float()

    def aggregate(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = features.detach().cpu().float().numpy()
        probs, attn = self._head.run(list(HEAD_OUTPUTS), {HEAD_INPUT: x})
        return torch.from_numpy(probs).float(), torch.from_numpy(attn).float()
