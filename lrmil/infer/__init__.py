"""LR-only inference from slide files: engines (torch, onnx, trt), the per-slide pipeline,
heatmaps and the multi-slide runner."""

from lrmil.infer.engines import ENGINES, Engine, load_engine
from lrmil.infer.pipeline import SlidePrediction, predict_slide
from lrmil.infer.run import InferSummary, infer_slides

__all__ = [
    "ENGINES", "Engine", "InferSummary", "SlidePrediction", "infer_slides", "load_engine",
    "predict_slide",
]
