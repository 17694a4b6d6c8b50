"""The one check of "this output is current": the input file an output records (resolved
path, size, mtime) against the file now."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

# mtimes pass through float64 seconds and some file systems (NFS, SMB, copies across them)
# keep microseconds or less: a difference below this is the same file.
MTIME_TOLERANCE_S = 1e-3


def resolve(path: str | os.PathLike[str]) -> Path:
    """The path duplicates are judged by: absolute, `..` and symlinks resolved (a missing
    file resolves as far as it can)."""
    return Path(path).expanduser().resolve()


@dataclass(frozen=True)
class FileIdentity:
    path: str  # resolved
    size: int
    mtime: float

    @classmethod
    def of(cls, path: str | os.PathLike[str]) -> FileIdentity:
        """The identity of an existing file (FileNotFoundError otherwise)."""
        resolved = resolve(path)
        stat = resolved.stat()
        return cls(str(resolved), stat.st_size, stat.st_mtime)

    @classmethod
    def recorded(cls, attrs: Mapping[str, object], prefix: str = "slide") -> FileIdentity | None:
        """The identity an output recorded as `<prefix>_path/_size/_mtime` attrs, if any."""
        try:
            return cls(str(attrs[f"{prefix}_path"]), int(attrs[f"{prefix}_size"]),  # type: ignore[call-overload]
                       float(attrs[f"{prefix}_mtime"]))  # type: ignore[arg-type]
        except (KeyError, TypeError, ValueError):
            return None

    def attrs(self, prefix: str = "slide") -> dict[str, object]:
        return {f"{prefix}_path": self.path, f"{prefix}_size": self.size,
                f"{prefix}_mtime": self.mtime}

    def matches(self, other: FileIdentity | None) -> bool:
        """The same file, unchanged: same resolved path, size and (within tolerance) mtime."""
        return (other is not None and self.path == other.path and self.size == other.size
                and abs(self.mtime - other.mtime) <= MTIME_TOLERANCE_S)
