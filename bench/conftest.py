"""Helpers the benchmarks share: peak memory, the machine and its load, and for the kernel
benchmarks interleaved timing of every contender (a memory copy among them, the bandwidth
yardstick) with a JSON record and a markdown table of ratios."""

from __future__ import annotations

import ctypes
import json
import os
import platform
import resource
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

# As the lrmil command does (cli/main.py), for every contender alike: torch's allocator backs big
# allocations with transparent huge pages, so fresh outputs cost few page faults.
os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")

import torch  # noqa: E402

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


def machine() -> str:
    """One line naming the machine and how busy it was (other processes share these cores)."""
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    return (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"torch {torch.__version__} with {torch.get_num_threads()} threads, OMP_WAIT_POLICY="
        f"{os.environ.get('OMP_WAIT_POLICY', 'unset')}, THP_MEM_ALLOC_ENABLE="
        f"{os.environ.get('THP_MEM_ALLOC_ENABLE', 'unset')}; load average {load}"
    )


# ---- interleaved timing of contenders (the kernel benchmarks) ----


@dataclass
class Timing:
    """One contender's figures over the rounds of an interleaved run; times in seconds."""

    median: float
    q1: float
    q3: float
    sys_per_call: float  # kernel (system) CPU time per call, all threads: page faults, futexes
    faults_per_call: float  # minor page faults per call (first touch of fresh memory)
    load: float  # 1-minute load average when the contender's rounds ended
    rounds: int


def interleaved(
    fns: dict[str, Callable[[], object]],
    rounds: int,
    warmup: int = 1,
    before: Callable[[], object] | None = None,
) -> dict:
    """Time every contender round-robin, one call each per round, alternating the order every
    round: a burst of load from the other processes on these cores then hits all contenders
    alike instead of whichever ran during it. `before`, if given, runs untimed before every
    timed call (e.g. to start every contender with the same cache state, whoever ran before it).
    Returns {name: Timing}."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    samples: dict[str, list[float]] = {name: [] for name in fns}
    sys_time = dict.fromkeys(fns, 0.0)
    faults = dict.fromkeys(fns, 0)
    names = list(fns)
    for r in range(rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            if before is not None:
                before()
            usage = resource.getrusage(resource.RUSAGE_SELF)
            start = time.perf_counter()
            fns[name]()
            elapsed = time.perf_counter() - start
            after = resource.getrusage(resource.RUSAGE_SELF)
            samples[name].append(elapsed)
            sys_time[name] += after.ru_stime - usage.ru_stime
            faults[name] += after.ru_minflt - usage.ru_minflt
    load = os.getloadavg()[0]
    out = {}
    for name, times in samples.items():
        q = statistics.quantiles(times, n=4) if len(times) > 1 else [times[0]] * 3
        out[name] = Timing(
            statistics.median(times), q[0], q[2], sys_time[name] / rounds,
            faults[name] / rounds, load, rounds,
        )  # fmt: skip
    return out


def try_compile(fn: Callable, warm: Callable[[Callable], object], **options) -> Callable | str:
    """torch.compile(fn, **options), compiled by warm(compiled), or the reason it failed: a
    formulation Inductor cannot compile is reported in the results, not dropped silently."""
    compiled = torch.compile(fn, **options)
    try:
        warm(compiled)
    except Exception as exc:  # Inductor codegen errors have no common type
        return f"fails to compile ({type(exc).__name__}: {str(exc).splitlines()[0][:80]})"
    return compiled


@dataclass
class Results:
    """Timings per case, written as JSON and as a markdown table of ratios against the best
    eager and the best compiled formulation."""

    title: str
    notes: list[str]
    cases: dict[str, dict] = field(default_factory=dict)
    tail: list[str] = field(default_factory=list)  # more markdown, after the tables
    start: str = field(default_factory=machine)

    def add(self, case: str, timings: dict, nbytes: int, copy_bytes: int, failed: dict) -> None:
        self.cases[case] = {
            "timings": {name: asdict(t) for name, t in timings.items()},
            "bytes": nbytes, "copy_bytes": copy_bytes, "failed": failed,
        }  # fmt: skip

    def _row(self, case: str) -> str:
        c = self.cases[case]
        t = {name: v["median"] for name, v in c["timings"].items()}
        fused = t["fused"]
        eager = {n: v for n, v in t.items() if n.startswith("eager")}
        compiled = {n: v for n, v in t.items() if n.startswith("compiled")}

        def best(group: dict) -> str:
            if not group:
                return "- | -"
            name = min(group, key=group.get)
            return f"{group[name] * 1e3:.1f} ({name.split(' ', 1)[1]}) | {group[name] / fused:.2f}x"

        gbps = c["bytes"] / fused / 1e9
        copy = c["copy_bytes"] / t["copy"] / 1e9
        f = c["timings"]["fused"]
        return (
            f"| {case} | {fused * 1e3:.1f} | {best(eager)} | {best(compiled)} | {gbps:.1f} | "
            f"{copy:.1f} | {100 * gbps / copy:.0f}% | {f['sys_per_call'] * 1e3:.1f} | "
            f"{f['faults_per_call']:.0f} | {f['load']:.1f} |"
        )

    def write(self, stem: str) -> None:
        lines = [
            f"# {self.title}", "",
            f"- start: {self.start}", f"- end: {machine()}", *[f"- {n}" for n in self.notes], "",
            "| case | fused ms | best eager ms (which) | fused speed-up | best compiled ms (which) "
            "| fused speed-up | fused GB/s | copy GB/s | fused % of copy | fused sys ms/call "
            "| fused faults/call | load |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|",
            *[self._row(case) for case in self.cases], "",
            "Every contender, median ms (interquartile range), system ms and page faults per call:",
            "",
        ]  # fmt: skip
        for case, c in self.cases.items():
            lines.append(f"- {case}: " + "; ".join(
                f"{name} {v['median'] * 1e3:.1f} ({v['q1'] * 1e3:.1f}-{v['q3'] * 1e3:.1f}) "
                f"sys {v['sys_per_call'] * 1e3:.1f} flt {v['faults_per_call']:.0f}"
                for name, v in c["timings"].items()
            ) + "".join(f"; {name}: {why}" for name, why in c["failed"].items()))  # fmt: skip
        lines += ["", *self.tail] if self.tail else []
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / f"{stem}.md").write_text("\n".join(lines) + "\n")
        record = {"title": self.title, "start": self.start, "end": machine(),
                  "notes": self.notes, "cases": self.cases, "tail": self.tail}  # fmt: skip
        (RESULTS / f"{stem}.json").write_text(json.dumps(record, indent=1) + "\n")
