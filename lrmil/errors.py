"""The exceptions lrmil raises for problems a user can fix.

The CLI prints any `LrmilError` as one line and exits non-zero; everything else is a bug and
keeps its traceback.
"""

from __future__ import annotations


class LrmilError(Exception):
    """Base class: a known problem with the user's input, files or environment."""


class SlideError(LrmilError):
    """A slide cannot be opened or read, or lacks what is needed (mpp, tissue, size)."""


class FileFormatError(LrmilError):
    """A coords, features, run or engine file is missing, corrupt or does not match."""


class ConfigError(LrmilError):
    """A setting or combination of settings is invalid."""


class EnvironmentMissingError(LrmilError):
    """An optional dependency or device (CUDA, ONNX Runtime, TensorRT) is not available."""
