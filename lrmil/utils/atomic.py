"""Atomic writes: an output appears under its final name only once it is complete.

Each writer gets a temporary path in the same folder (so `os.replace` is an atomic rename on
the same file system); the temporary file is removed if the writer fails or is interrupted.
A process killed outright (SIGKILL, power loss) cannot clean up: its temporary names carry
host, pid and process start time, and `remove_stale_temps` (run by the next run) removes those
whose process is gone.
"""

from __future__ import annotations

import contextlib
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path

from lrmil.utils.processes import ProcessId, is_running, on_this_host, this_process

# .<final name>.tmp-<host>-<pid>-<start ticks>
_TEMP = re.compile(r"^\..+\.tmp-(?P<host>.+)-(?P<pid>\d+)-(?P<start>\d+)$")
# Another host's temporary file is judged by age alone (its process cannot be checked).
FOREIGN_TEMP_AGE_S = 24 * 3600.0


def temp_path_for(final: Path) -> Path:
    """A hidden, process-unique temporary name beside `final` (never mistaken for an output)."""
    me = this_process()
    return final.with_name(f".{final.name}.tmp-{me.host}-{me.pid}-{me.start}")


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
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        # A full disk, a quota, a read-only mount: the writer's error names no file (Pillow,
        # h5py's own writes) or the hidden temporary one; name the output instead.
        if exc.errno is not None and exc.filename in (None, str(tmp)):
            raise OSError(exc.errno, exc.strerror, str(final)) from exc
        raise
    except BaseException:  # KeyboardInterrupt too: never leave a half-written file behind
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_text(final: str | os.PathLike[str], text: str) -> None:
    """Write `text` (UTF-8) to `final` atomically."""
    with atomic_path(final) as tmp:
        tmp.write_text(text, encoding="utf-8")


def remove_stale_temps(folder: str | os.PathLike[str], depth: int = 2) -> list[Path]:
    """Remove the temporary files of dead processes in `folder` and its subfolders (down to
    `depth` levels); returns what was removed. A live writer's files are never touched."""
    removed: list[Path] = []
    now = time.time()
    for entry in _scan(Path(folder), depth):
        match = _TEMP.match(entry.name)
        if match is None:
            continue
        owner = ProcessId(match["host"], "", int(match["pid"]), int(match["start"]))
        if on_this_host(owner):
            stale = not is_running(owner)
        else:
            try:
                stale = now - entry.stat().st_mtime > FOREIGN_TEMP_AGE_S
            except FileNotFoundError:
                continue
        if stale:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(entry.path)
                removed.append(Path(entry.path))
    return removed


def _scan(folder: Path, depth: int) -> Iterator[os.DirEntry[str]]:
    try:
        with os.scandir(folder) as entries:
            for entry in entries:
                if entry.is_dir(follow_symlinks=False):
                    if depth > 0:
                        yield from _scan(Path(entry.path), depth - 1)
                elif entry.name.startswith("."):
                    yield entry
    except (FileNotFoundError, NotADirectoryError, PermissionError):
        return
