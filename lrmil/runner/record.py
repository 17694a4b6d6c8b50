"""What a run leaves besides its outputs: `OUT/runs/<start>-<host>-<pid>.json` (one per process)
and `OUT/errors.csv` (the slides of the folder whose last attempt failed)."""

from __future__ import annotations

import contextlib
import csv
import fcntl
import io
import json
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from lrmil.utils.atomic import atomic_write_text
from lrmil.utils.processes import this_process

RUNS_DIR = "runs"
ERRORS_CSV = "errors.csv"
ERRORS_COLUMNS = ["slide", "path", "error", "run"]
STATUSES = ("ok", "skipped", "failed", "claimed-elsewhere")


@dataclass
class SlideResult:
    """What one run did with one slide."""

    slide: str  # its name: outputs are named by it
    path: str  # the input file, resolved
    status: str  # one of STATUSES
    patches: int = 0
    seconds: float = 0.0
    error: str = ""  # failed: one line naming the file and the problem
    note: str = ""  # e.g. "no tissue", "took over the stale claim of ..."
    rank: int = 0


@dataclass
class RunSummary:
    command: str
    out_dir: Path
    results: list[SlideResult] = field(default_factory=list)
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)  # about the run: slide list, stale claims
    records: list[Path] = field(default_factory=list)  # runs/*.json of every process
    rank: int = 0  # this process's rank or shard
    world_size: int = 1
    coordinated: bool = False  # torchrun: rank 0 reports for every rank

    @property
    def reports(self) -> bool:
        """Whether this process prints the summary (under torchrun only rank 0 does)."""
        return not self.coordinated or self.rank == 0

    def count(self, status: str) -> int:
        return sum(r.status == status for r in self.results)

    @property
    def ok(self) -> int:
        return self.count("ok")

    @property
    def skipped(self) -> int:
        return self.count("skipped")

    @property
    def failed(self) -> int:
        return self.count("failed")

    @property
    def claimed_elsewhere(self) -> int:
        return self.count("claimed-elsewhere")

    @property
    def patches(self) -> int:
        return sum(r.patches for r in self.results if r.status == "ok")

    @property
    def errors(self) -> list[SlideResult]:
        return [r for r in self.results if r.status == "failed"]

    def counts(self) -> dict[str, int]:
        return {status: self.count(status) for status in STATUSES}


_used_ids: set[str] = set()


def run_id(started: float) -> str:
    """`<start>-<host>-<pid>`, the name of this run's record; start in UTC to the millisecond
    (and a counter should one process start two runs within it)."""
    me = this_process()
    millis = int(started % 1 * 1000)
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(started)) + f".{millis:03d}Z"
    run = base = f"{stamp}-{me.host}-{me.pid}"
    n = 1
    while run in _used_ids:
        n += 1
        run = f"{base}.{n}"
    _used_ids.add(run)
    return run


class RunRecord:
    """`OUT/runs/<id>.json`, written when the run starts (status "running") and again when it
    ends: a process killed outright leaves its "running" record behind."""

    def __init__(self, out_dir: Path, command: str, run: str, settings: dict[str, Any],
                 rank: int, world_size: int, shard: str | None, group: str) -> None:
        from lrmil.info import versions

        self.path = out_dir / RUNS_DIR / f"{run}.json"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.data: dict[str, Any] = {
            "command": command, "run": run, "group": group, "status": "running",
            "process": this_process().as_dict(), "rank": rank, "world_size": world_size,
            "shard": shard, "argv": sys.argv, "started": _iso(time.time()), "finished": None,
            "seconds": None, "settings": settings, "versions": versions(), "notes": [],
            "counts": {}, "slides": [],
        }
        self._write()

    def finish(self, status: str, results: list[SlideResult], seconds: float,
               notes: list[str]) -> None:
        by_status = {s: sum(r.status == s for r in results) for s in STATUSES}
        self.data.update(status=status, finished=_iso(time.time()), seconds=round(seconds, 3),
                         notes=notes, counts=by_status, slides=[asdict(r) for r in results])
        self._write()

    def _write(self) -> None:
        atomic_write_text(self.path, json.dumps(self.data, indent=1) + "\n")


def read_record(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8"))


def results_of(record: dict[str, Any]) -> list[SlideResult]:
    return [SlideResult(**item) for item in record.get("slides", [])]


def update_errors(out_dir: Path, results: Iterable[SlideResult], run: str) -> Path:
    """Rewrite OUT/errors.csv: the rows of the slides this run attempted are replaced by its
    failures; rows of other slides (other runs, shards) stay. Serialised by a lock file, as
    several processes may finish at once."""
    path = out_dir / ERRORS_CSV
    results = list(results)
    attempted = {r.slide for r in results}
    with _locked(out_dir / RUNS_DIR / ".errors.lock"):
        rows = [row for row in _read_errors(path) if row.get("slide") not in attempted]
        rows += [{"slide": r.slide, "path": r.path, "error": r.error, "run": run}
                 for r in results if r.status == "failed"]
        rows.sort(key=lambda row: row["slide"])
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, ERRORS_COLUMNS, lineterminator="\n",
                                extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
        atomic_write_text(path, buffer.getvalue())
    return path


def _read_errors(path: Path) -> list[dict[str, str]]:
    try:
        with path.open(newline="", encoding="utf-8") as f:
            return list(csv.DictReader(f))
    except (FileNotFoundError, UnicodeDecodeError, csv.Error):
        return []  # none yet, or not ours to keep


@contextlib.contextmanager
def _locked(lock: Path) -> Iterator[None]:
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a") as f:
        fcntl.lockf(f, fcntl.LOCK_EX)  # POSIX locks also hold across NFS clients
        try:
            yield
        finally:
            fcntl.lockf(f, fcntl.LOCK_UN)


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))
