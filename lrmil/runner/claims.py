"""Claims: `OUT/.claims/<slide>` says who is working on a slide, so that any number of
processes, ranks and hosts sharing one output folder do each slide once.

A claim is created with O_CREAT|O_EXCL (exactly one creator wins, on local file systems and
NFSv3+), holds the owner (host, boot, pid, process start time, run) and is removed by its owner
once the slide's output is complete. A claim is stale, and taken over with a note, when its
process is gone (same host) or when it has not been refreshed for `stale_after` seconds (another
host: its owner refreshes the claim's mtime every `stale_after / 10`). Ages are measured on the
file system's clock (the mtime of a file just touched), so clock skew between hosts does not
matter. A takeover is serialised by a second O_EXCL file, so two processes never both take over.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from lrmil.utils.processes import ProcessId, is_running, on_this_host, this_process

CLAIMS_DIR = ".claims"
STALE_AFTER_S = 600.0
# A takeover takes milliseconds; a takeover lock older than this belongs to a dead process.
TAKEOVER_LOCK_AGE_S = 60.0


@dataclass(frozen=True)
class Claim:
    """A claim this process holds."""

    name: str
    path: Path
    content: bytes  # what was written: a claim is only removed by the process that wrote it
    note: str = ""  # "took over the stale claim of HOST:PID (why)"


@dataclass(frozen=True)
class Busy:
    """A live claim of another process."""

    name: str
    owner: str  # "HOST:PID (run RUN)"


@dataclass(frozen=True)
class _Holder:
    raw: bytes
    owner: ProcessId | None  # None: unreadable (being written, or its writer died mid-write)
    run: str
    mtime: float


class Claims:
    """The claims of one process in one output folder, refreshed by a background thread
    while held. Use as a context manager (the thread stops at exit)."""

    def __init__(self, out_dir: Path, run_id: str, stale_after: float = STALE_AFTER_S) -> None:
        self.folder = Path(out_dir) / CLAIMS_DIR
        self.folder.mkdir(parents=True, exist_ok=True)
        self.run_id = run_id
        self.stale_after = stale_after
        self.me = this_process()
        self._held: dict[str, Claim] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> Claims:
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        with self._lock:  # interrupted mid-slide: give the slides back at once
            held, self._held = list(self._held.values()), {}
        for claim in held:
            self._remove_if_mine(claim)

    def acquire(self, name: str, slide: str) -> Claim | Busy:
        path = self.folder / name
        content = json.dumps({"slide": slide, "run": self.run_id, **self.me.as_dict(),
                              "started": time.time()}).encode()
        note = ""
        for _ in range(8):  # each turn either creates the claim or sees another holder
            try:
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = self._read(path)
                if holder is None:
                    continue  # released meanwhile
                why = self._stale(holder)
                if why is None:
                    return Busy(name, _describe(holder))
                if self._take_over(path, holder):
                    note = f"took over the stale claim of {_describe(holder)}: {why}"
                continue
            with os.fdopen(fd, "wb") as f:
                f.write(content)
            claim = Claim(name, path, content, note)
            with self._lock:
                self._held[name] = claim
                self._start_heartbeat()
            return claim
        return Busy(name, "several processes at once")

    def release(self, claim: Claim) -> None:
        """The slide's output is complete (or it failed): let it go."""
        with self._lock:
            self._held.pop(claim.name, None)
        self._remove_if_mine(claim)

    def holder(self, name: str) -> Busy | None:
        """The live claim on `name`, if any (a stale one counts as none)."""
        holder = self._read(self.folder / name)
        if holder is None or self._stale(holder) is not None:
            return None
        return Busy(name, _describe(holder))

    def _remove_if_mine(self, claim: Claim) -> None:
        with contextlib.suppress(FileNotFoundError):
            if claim.path.read_bytes() == claim.content:  # not one that took ours over
                claim.path.unlink()

    def _read(self, path: Path) -> _Holder | None:
        try:
            raw = path.read_bytes()
            mtime = path.stat().st_mtime
        except FileNotFoundError:
            return None
        try:
            data = json.loads(raw)
            return _Holder(raw, ProcessId.from_dict(data), str(data.get("run", "")), mtime)
        except (ValueError, KeyError, TypeError):
            return _Holder(raw, None, "", mtime)

    def _stale(self, holder: _Holder) -> str | None:
        """Why `holder`'s claim is stale, or None while it is live."""
        if holder.owner is not None and on_this_host(holder.owner):
            return None if is_running(holder.owner) else "its process is gone"
        age = self._fs_now() - holder.mtime
        if age > self.stale_after:
            return f"not refreshed for {age:.0f} s (limit {self.stale_after:.0f} s)"
        return None

    def _take_over(self, path: Path, holder: _Holder) -> bool:
        """Remove `holder`'s stale claim unless another process is taking it over."""
        lock = self.folder / f".{path.name}.takeover"
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            with contextlib.suppress(FileNotFoundError):
                if self._fs_now() - lock.stat().st_mtime > TAKEOVER_LOCK_AGE_S:
                    lock.unlink()  # left by a process that died mid-takeover
            return False
        os.close(fd)
        try:
            current = self._read(path)
            if current is None or current.raw != holder.raw:
                return False  # released, or already taken over by someone else
            path.unlink()
            return True
        finally:
            lock.unlink(missing_ok=True)

    def _fs_now(self) -> float:
        """Now on the file system's clock: the mtime of a file this process just touched."""
        probe = self.folder / f".clock-{self.me.host}-{self.me.pid}"
        probe.touch()
        try:
            return probe.stat().st_mtime
        finally:
            probe.unlink(missing_ok=True)

    def _start_heartbeat(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._beat, name="lrmil-claims", daemon=True)
            self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(self.stale_after / 10):
            with self._lock:
                held = list(self._held.values())
            for claim in held:
                with contextlib.suppress(FileNotFoundError):
                    os.utime(claim.path)  # the file system's clock: no skew between hosts


def _describe(holder: _Holder) -> str:
    if holder.owner is None:
        return "a process whose claim is unreadable"
    run = f" (run {holder.run})" if holder.run else ""
    return f"{holder.owner}{run}"
