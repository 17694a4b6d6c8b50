"""Loading encoder weights from a local file, with errors that say what did not match."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from lrmil.errors import FileFormatError

# Checkpoints often nest the state dict or prefix its keys (DataParallel, CLIP towers).
_NESTING_KEYS = ("state_dict", "model", "model_state_dict")


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from a .safetensors file or a torch file loaded with weights_only=True."""
    path = Path(path)
    if not path.is_file():
        raise FileFormatError(f"weights file {path} does not exist")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # any decoding failure is the file's fault
        raise FileFormatError(f"weights file {path} cannot be read: {exc}") from None
    for key in _NESTING_KEYS:
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise FileFormatError(f"weights file {path} holds no state dict of tensors")
    for key, value in state.items():  # a diverged or corrupted checkpoint embeds NaN everywhere
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise FileFormatError(f"weights file {path}: tensor {key} holds NaN or inf values")
    return state


def file_sha256(path: str | Path) -> str:
    """The file's SHA-256, as model hubs publish it: which weights made a features file."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as fh:
        while chunk := fh.read(1 << 24):
            digest.update(chunk)
    return digest.hexdigest()


def _strip_prefix(state: dict[str, torch.Tensor], wanted: Sequence[str]) -> dict[str, torch.Tensor]:
    """The sub-dict under the prefix (e.g. `module.`, `visual.trunk.`) at which the model's first
    key is found, if the keys do not match as they are."""
    if not wanted or wanted[0] in state:
        return state
    first = wanted[0]
    for key in state:
        if key.endswith("." + first):
            prefix = key[: -len(first)]
            sub = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
            if len(set(sub) & set(wanted)) > len(set(state) & set(wanted)):
                return sub
    return state


def _sample(keys: Sequence[str], n: int = 4) -> str:
    keys = sorted(keys)
    more = f" and {len(keys) - n} more" if len(keys) > n else ""
    return ", ".join(keys[:n]) + more


def load_weights(
    model: nn.Module,
    path: str | Path,
    name: str,
    ignore_prefixes: Sequence[str] = (),
    assign: bool = False,
) -> None:
    """Load `path` into `model` strictly. Keys under `ignore_prefixes` (a classifier head the
    encoder does not have) are dropped; anything else missing, unexpected or of the wrong shape
    is a FileFormatError naming the keys. `assign` takes the file's tensors (in the model's
    dtypes) instead of copying into the model's: for a model built on the meta device."""
    expected = model.state_dict()
    state = _strip_prefix(read_state_dict(path), list(expected))
    state = {
        k: v for k, v in state.items() if k in expected or not k.startswith(tuple(ignore_prefixes))
    }
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [
        f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    problems = []
    if missing:
        problems.append(f"missing {len(missing)} keys ({_sample(missing)})")
    if unexpected:
        problems.append(f"unexpected {len(unexpected)} keys ({_sample(unexpected)})")
    if shapes:
        problems.append(f"wrong shapes, file vs model: {_sample(shapes, 3)}")
    if problems:
        raise FileFormatError(
            f"weights file {path} does not fit encoder {name}: " + "; ".join(problems)
        )
    if assign:
        state = {k: v.to(expected[k].dtype) for k, v in state.items()}
    model.load_state_dict(state, strict=True, assign=assign)
