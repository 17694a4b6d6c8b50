"""The output folder of every command (--out): checked before any work, then created."""

from __future__ import annotations

import os
from pathlib import Path

from lrmil.errors import ConfigError


def check_out_path(out_dir: str | os.PathLike[str], option: str = "--out") -> Path:
    """The output folder's path, refused in one line if it is an existing file or lies below
    one; nothing is created (a command validates everything before it writes)."""
    out = Path(out_dir)
    for path in (out, *out.parents):
        if path.exists():
            if not path.is_dir():
                where = "this" if path == out else f"{path}"
                raise ConfigError(f"{out}: {option} must be a folder, and {where} is an "
                                  "existing file")
            break
    return out


def check_out_dir(out_dir: str | os.PathLike[str], option: str = "--out") -> Path:
    """The output folder, checked and created, and probed for writing; ConfigError (one line)
    if it cannot be."""
    out = check_out_path(out_dir, option)
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".write-test-{os.getpid()}"
        probe.touch()
        probe.unlink()
    except OSError as exc:
        raise ConfigError(f"{out}: cannot write to the output folder ({exc.strerror})") from None
    return out
