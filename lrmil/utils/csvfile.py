"""The one CSV reader of the files users write (labels, splits, slide lists, mpp tables).

Spreadsheets save CSVs in several ways; all of these are read: a UTF-8 byte-order mark (Excel's
"CSV UTF-8"), `;` as the delimiter (Excel in locales with a decimal comma), tabs, and CRLF line
ends. Every error names the file and, where there is one, the line."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from lrmil.errors import FileFormatError

DELIMITERS = (",", ";", "\t")


@dataclass
class CsvTable:
    path: Path
    what: str
    header: list[str]
    rows: list[tuple[int, list[str]]]  # (line number in the file, cells), blank lines dropped

    def records(self) -> list[tuple[int, dict[str, str]]]:
        """Rows as {column: cell}, missing cells as ""; a row longer than the header is refused
        (a delimiter inside a name, most often)."""
        width = len(self.header)
        out = []
        for line, cells in self.rows:
            if len(cells) > width:
                raise FileFormatError(f"{self.what} {self.path} line {line}: {len(cells)} cells, "
                                      f"the header has {width}")
            out.append((line, dict(zip(self.header, cells + [""] * (width - len(cells)),
                                       strict=True))))
        return out


def read_csv(path: str | Path, what: str, required: Sequence[str] = ()) -> CsvTable:
    """Read `path` (a `what`, e.g. "labels CSV", for the messages) whose header must hold the
    `required` columns. Header cells and data cells are stripped of surrounding spaces."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise FileFormatError(f"{what} {path} does not exist") from None
    except IsADirectoryError:
        raise FileFormatError(f"{what} {path} is a folder, not a CSV file") from None
    except OSError as exc:
        raise FileFormatError(f"{what} {path}: cannot read it ({exc.strerror})") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise FileFormatError(f"{what} {path} line {line}: not UTF-8 text (save it as "
                              "\"CSV UTF-8\")") from None
    lines = text.splitlines()
    first = next((line for line in lines if line.strip()), "")
    if not first:
        raise FileFormatError(f"{what} {path} is empty (expected a header "
                              f"{','.join(required) or 'row'})")
    reader = csv.reader(lines, delimiter=_delimiter(first, required))
    header: list[str] | None = None
    rows: list[tuple[int, list[str]]] = []
    try:
        for cells in reader:
            cells = [c.strip() for c in cells]
            if not any(cells):
                continue
            if header is None:
                header = cells
            else:
                rows.append((reader.line_num, cells))
    except csv.Error as exc:
        raise FileFormatError(f"{what} {path} line {reader.line_num}: {exc}") from None
    assert header is not None  # `first` is a non-blank line
    missing = [c for c in required if c not in header]
    if missing:
        raise FileFormatError(f"{what} {path} needs the column(s) {','.join(required)}; its "
                              f"header is {','.join(header)!r}")
    return CsvTable(path, what, header, rows)


def _delimiter(header: str, required: Sequence[str]) -> str:
    """The delimiter under which the header holds the required columns, else the one that
    splits it into most cells (a comma when nothing splits it)."""
    def cells(sep: str) -> list[str]:
        return [c.strip() for c in next(csv.reader([header], delimiter=sep))]

    for sep in DELIMITERS:
        if required and set(required) <= set(cells(sep)):
            return sep
    return max(DELIMITERS, key=lambda sep: (len(cells(sep)), sep == ","))
