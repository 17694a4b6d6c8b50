"""Telling a truncated TIFF-based slide (an interrupted copy or download) from a file OpenSlide
does not support: the header and directories are walked, and image data or a directory that
lies past the end of the file means the file was cut short."""

from __future__ import annotations

import struct
from pathlib import Path
from typing import BinaryIO

# The formats that are TIFF files (NDPI's 64-bit offset extension is not followed: its high bits
# live outside the TIFF structure, so a cut NDPI is reported by OpenSlide as it is).
TIFF_SUFFIXES = {".svs", ".tif", ".tiff", ".scn", ".bif"}
OFFSET_TAGS, COUNT_TAGS = {273, 324}, {279, 325}  # strip / tile offsets and byte counts
MAX_IFDS = 4096  # a loop in a corrupt file ends here
TYPE_SIZES = {3: 2, 4: 4, 16: 8}  # SHORT, LONG, LONG8


def truncation(path: Path) -> str | None:
    """'looks truncated (N bytes, expected at least M)' where a TIFF's header is right and part
    of its data lies past the end of the file; None when it does not look cut short."""
    if path.suffix.lower() not in TIFF_SUFFIXES:
        return None
    try:
        with path.open("rb") as f:
            size = f.seek(0, 2)
            needed = _needed_bytes(f, size)
    except (OSError, struct.error):
        return None
    if needed is None or needed <= size:
        return None
    return (f"looks truncated ({size:,} bytes, expected at least {needed:,}): an interrupted "
            "copy or download? copy it again")


def _needed_bytes(f: BinaryIO, size: int) -> int | None:
    """The end of the furthest directory or strip/tile the file refers to; None if the header
    is not TIFF's."""
    f.seek(0)
    head = f.read(16)
    if head[:2] not in (b"II", b"MM"):
        return None
    order = "<" if head[:2] == b"II" else ">"
    version = struct.unpack(order + "H", head[2:4])[0]
    if version == 42:
        big, ifd = False, struct.unpack(order + "I", head[4:8])[0]
    elif version == 43:
        big, ifd = True, struct.unpack(order + "Q", head[8:16])[0]
    else:
        return None
    count_fmt, entry_size, ptr_fmt = ("Q", 20, "Q") if big else ("H", 12, "I")
    needed, seen = 0, set()
    while ifd and ifd not in seen and len(seen) < MAX_IFDS:
        seen.add(ifd)
        if ifd + 8 > size:
            return max(needed, ifd + 8)
        f.seek(ifd)
        n = struct.unpack(order + count_fmt, f.read(struct.calcsize(count_fmt)))[0]
        table_end = ifd + struct.calcsize(count_fmt) + n * entry_size + struct.calcsize(ptr_fmt)
        if table_end > size:
            return max(needed, table_end)
        entries = f.read(n * entry_size)
        arrays: dict[int, list[int]] = {}
        for i in range(n):
            entry = entries[i * entry_size:(i + 1) * entry_size]
            tag, kind = struct.unpack(order + "HH", entry[:4])
            if tag not in OFFSET_TAGS | COUNT_TAGS or kind not in TYPE_SIZES:
                continue
            values = _values(f, order, entry, big, kind, size)
            if values is None:  # the array itself lies past the end
                return max(needed, size + 1)
            arrays[tag] = values
        for offsets_tag, counts_tag in ((273, 279), (324, 325)):
            offsets, counts = arrays.get(offsets_tag, []), arrays.get(counts_tag, [])
            ends = [o + c for o, c in zip(offsets, counts, strict=False) if c]
            needed = max(needed, *ends, 0)
        ifd = struct.unpack(order + ptr_fmt, f.read(struct.calcsize(ptr_fmt)))[0]
    return needed


def _values(f: BinaryIO, order: str, entry: bytes, big: bool, kind: int,
            size: int) -> list[int] | None:
    count = struct.unpack(order + ("Q" if big else "I"), entry[4:12] if big else entry[4:8])[0]
    field = entry[12:20] if big else entry[8:12]
    width = TYPE_SIZES[kind]
    code = {2: "H", 4: "I", 8: "Q"}[width]
    if count * width <= len(field):
        return list(struct.unpack(order + code * count, field[:count * width]))
    pointer = struct.unpack(order + ("Q" if big else "I"), field)[0]
    if pointer + count * width > size:
        return None
    here = f.tell()
    f.seek(pointer)
    values = list(struct.unpack(order + code * count, f.read(count * width)))
    f.seek(here)
    return values
