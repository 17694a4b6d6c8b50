"""Gated attention MIL on packed bags."""

from lrmil.mil.batch import Bag, Batch, collate, pack
from lrmil.mil.model import GatedABMIL, InputStats, MILOutput

__all__ = ["Bag", "Batch", "GatedABMIL", "InputStats", "MILOutput", "collate", "pack"]
