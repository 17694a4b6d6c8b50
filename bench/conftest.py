"""Helpers the kernel benchmarks share: peak memory, a memory-copy yardstick, the machine's
load, and collecting medians into a markdown summary of ratios."""

from __future__ import annotations

import ctypes
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path

import torch

RESULTS = Path(__file__).parent / "results"


def _return_freed_memory_to_the_os() -> None:
    """Make every allocation of 128 KiB or more its own mmap (glibc otherwise raises that
    threshold as big blocks are freed and then keeps them in its heap), so that the resident
    memory high-water mark below sees each call's own peak, not the heap's history."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc: peaks may then be under-reported
        return
    m_trim_threshold, m_mmap_threshold = -1, -3
    libc.mallopt(m_mmap_threshold, 128 * 1024)
    libc.mallopt(m_trim_threshold, 128 * 1024)


_return_freed_memory_to_the_os()


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def peak_extra_bytes(fn: Callable[[], object]) -> float:
    """Resident-memory high-water mark while fn() runs, above the resident memory before it
    (Linux /proc: sees every allocation, torch's or not)."""
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
    before = _status_kib("VmRSS")
    fn()
    return (_status_kib("VmHWM") - before) * 1024.0


def copy_gbps(tensor: torch.Tensor, repeats: int = 5) -> float:
    """Bandwidth of copying `tensor` (bytes read + written per second, best of `repeats`)."""
    out = torch.empty_like(tensor)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        out.copy_(tensor)
        best = min(best, time.perf_counter() - start)
    return 2 * tensor.nbytes / best / 1e9


def machine() -> str:
    """One line naming the machine and how busy it was (other processes share these cores)."""
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    return (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"torch {torch.__version__} with {torch.get_num_threads()} threads; load average {load}"
    )


class Summary:
    """Medians (seconds) and other figures per (group, contender), written as markdown."""

    def __init__(self) -> None:
        self.median: dict[tuple[str, str], float] = {}
        self.extra: dict[tuple[str, str], dict[str, float]] = {}
        self.load_at_start = machine()

    def add(self, group: str, contender: str, median: float, **extra: float) -> None:
        self.median[(group, contender)] = median
        self.extra[(group, contender)] = extra

    def groups(self) -> list[str]:
        return list(dict.fromkeys(g for g, _ in self.median))

    def get(self, group: str, contender: str) -> float | None:
        return self.median.get((group, contender))
