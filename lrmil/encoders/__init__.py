"""Patch encoders: a registry of built-ins (`lrmil-cnn`, `lrmil-vit-tiny`) and timm /
torchvision models with weights from a local file. See `registry` for layers and grid sizes."""

from lrmil.encoders.base import Encoder, Preprocess
from lrmil.encoders.registry import build, known_encoders, register
from lrmil.encoders.vit import interpolate_pos_embed
from lrmil.encoders.weights import load_weights, read_state_dict

__all__ = [
    "Encoder",
    "Preprocess",
    "build",
    "interpolate_pos_embed",
    "known_encoders",
    "load_weights",
    "read_state_dict",
    "register",
]
