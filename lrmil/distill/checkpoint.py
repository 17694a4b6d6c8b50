"""Weights as safetensors (never pickles), with what is needed to rebuild the module stored in
the file's metadata."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import torch
from torch import nn

from lrmil.errors import FileFormatError
from lrmil.mil import GatedABMIL
from lrmil.utils.atomic import atomic_path


def save_module(module: nn.Module, path: Path, meta: dict) -> None:
    from safetensors import SafetensorError
    from safetensors.torch import save_file

    state = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
    with atomic_path(path) as tmp:
        try:
            save_file(state, str(tmp), metadata={"lrmil": json.dumps(meta)})
        except SafetensorError as exc:  # its I/O errors (a full disk) are no OSErrors
            code = re.search(r"\(os error (\d+)\)", str(exc))
            if code is None:
                raise
            raise OSError(int(code[1]), os.strerror(int(code[1]))) from exc  # names `path`


def load_state(path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    """The checkpoint's tensors and its lrmil metadata."""
    return _read(path, with_state=True)


def load_meta(path: Path) -> dict:
    """The checkpoint's lrmil metadata (best epoch, validation AUC, ...), no tensor read."""
    return _read(path, with_state=False)[1]


def _read(path: Path, with_state: bool) -> tuple[dict[str, torch.Tensor], dict]:
    from safetensors import safe_open

    if not path.is_file():
        raise FileFormatError(f"checkpoint {path} does not exist")
    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = json.loads((fh.metadata() or {}).get("lrmil", "{}"))
            state = ({key: fh.get_tensor(key) for key in fh.keys()}  # noqa: SIM118
                     if with_state else {})
    except Exception as exc:  # safetensors raises its own error types
        raise FileFormatError(f"checkpoint {path} cannot be read: {exc}") from exc
    return state, meta


def save_mil(model: GatedABMIL, path: Path, extra: dict | None = None) -> None:
    save_module(model, path, {"hparams": model.hparams(), **(extra or {})})


def load_mil(path: Path) -> tuple[GatedABMIL, dict]:
    state, meta = load_state(path)
    if "hparams" not in meta:
        raise FileFormatError(f"checkpoint {path} is not an lrmil MIL model (no hparams)")
    model = GatedABMIL.from_hparams(meta["hparams"])
    model.load_state_dict(state)
    return model.eval(), meta
