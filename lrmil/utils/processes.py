"""Processes: who we are (host, pid, start time), whether a recorded process still runs, and
worker processes that never outlive their parent.

A pid alone is not an identity (pids are reused): a process is identified by host, boot, pid
and its start time in clock ticks since boot (Linux /proc); elsewhere the start time is 0 and
only the pid is checked."""

from __future__ import annotations

import ctypes
import os
import signal
import socket
from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import cache, partial

PR_SET_PDEATHSIG = 1  # linux/prctl.h


@cache
def host() -> str:
    return socket.gethostname()


@cache
def boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return ""


def start_ticks(pid: int) -> int:
    """The process's start time in clock ticks since boot (field 22 of /proc/PID/stat), 0 when
    unknown; -1 when the process does not exist."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except FileNotFoundError:
        return -1
    except OSError:
        return 0
    # The command name (field 2) may hold spaces and parentheses: split after its last ')'.
    return int(stat[stat.rindex(b")") + 2 :].split()[19])


@dataclass(frozen=True)
class ProcessId:
    host: str
    boot: str
    pid: int
    start: int  # clock ticks since boot, 0 when unknown

    def as_dict(self) -> dict[str, object]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> ProcessId:
        return cls(str(data["host"]), str(data.get("boot", "")), int(data["pid"]),  # type: ignore[arg-type]
                   int(data.get("start", 0)))  # type: ignore[arg-type]

    def __str__(self) -> str:
        return f"{self.host}:{self.pid}"


def this_process() -> ProcessId:
    pid = os.getpid()
    return ProcessId(host(), boot_id(), pid, max(start_ticks(pid), 0))


def on_this_host(proc: ProcessId) -> bool:
    return proc.host == host()


def is_running(proc: ProcessId) -> bool:
    """Whether `proc`, a process of this host, still runs (the same process, not a reuse of its
    pid, nor one from before a reboot)."""
    if proc.boot and boot_id() and proc.boot != boot_id():
        return False
    ticks = start_ticks(proc.pid)
    if ticks == -1:
        return False
    if ticks and proc.start:
        return ticks == proc.start
    try:
        os.kill(proc.pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, owned by someone else
    return True


def die_with_parent(parent_pid: int) -> None:
    """Run first in a worker process: the kernel sends it SIGKILL when its parent dies
    (SIGKILL of the parent included), and if the parent died before this call the worker
    exits now. Linux only; elsewhere a no-op."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        return
    if os.getppid() != parent_pid:  # the parent is already gone: we were re-parented
        os._exit(1)


def worker_initializer(parent_pid: int) -> None:
    """Initializer of lrmil's process pools: dies with the parent, leaves Ctrl-C to it (the
    parent lets running slides finish and cancels the rest)."""
    die_with_parent(parent_pid)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def dataloader_worker_init() -> Callable[[int], None]:
    """A `worker_init_fn` for a DataLoader created by this process: its workers die with it
    (torch's own watchdog notices a dead parent only between items, after seconds)."""
    return partial(_loader_worker_started, os.getpid())


def _loader_worker_started(parent_pid: int, _worker_id: int) -> None:
    die_with_parent(parent_pid)
