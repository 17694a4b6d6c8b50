"""Atomic writes: an output appears under its final name only once it is complete.

Each writer gets a temporary path in the same folder (so `os.replace` is an atomic rename on
the same file system); the temporary file is removed if the writer fails or is interrupted.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path


def temp_path_for(final: Path) -> Path:
    """A hidden, process-unique temporary name beside `final` (never mistaken for an output)."""
    return final.with_name(f".{final.name}.tmp-{os.getpid()}")


@contextlib.contextmanager
def atomic_path(final: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path to write; on success rename it to `final`, on failure remove it.

    >>> with atomic_path("out/coords.h5") as tmp:
    ...     write_h5(tmp)
    """
    final = Path(final)
    tmp = temp_path_for(final)
    try:
        yield tmp
        os.replace(tmp, final)
    except BaseException:  # KeyboardInterrupt too: never leave a half-written file behind
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_text(final: str | os.PathLike[str], text: str) -> None:
    """Write `text` (UTF-8) to `final` atomically."""
    with atomic_path(final) as tmp:
        tmp.write_text(text, encoding="utf-8")
