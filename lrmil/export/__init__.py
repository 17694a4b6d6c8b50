"""Export of the LR inference graphs (encoder, MIL head) to ONNX and TensorRT, with sidecars."""

from lrmil.export.graphs import EncoderGraph, HeadGraph, weights_sha256
from lrmil.export.onnx_export import ExportCheckError, export_onnx
from lrmil.export.run import DEFAULT_BAG, DEFAULT_BATCH, export_model, export_run
from lrmil.export.sidecar import ModelMeta, Sidecar, check_sidecar, read_sidecar

__all__ = [
    "DEFAULT_BAG", "DEFAULT_BATCH", "EncoderGraph", "ExportCheckError", "HeadGraph", "ModelMeta",
    "Sidecar", "check_sidecar", "export_model", "export_onnx", "export_run", "read_sidecar",
    "weights_sha256",
]
