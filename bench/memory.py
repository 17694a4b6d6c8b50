"""The memory benchmark of issue 10: peak RSS of `lrmil distill` on generated real-size cohorts,
and the epoch time of the feature store against bags held in RAM.

    nice -n 10 .venv/bin/python bench/memory.py [--work /tmp/lrmil-memory] [--slides 10 40 160]

1. Peak memory: `lrmil distill` (stage 1 adapter mode, 2 folds, 1 epoch per model) as a
   subprocess on 10, 40 and 160 slides of bench/memory_cohort.py (768-d, ~7.1k HR patches per
   slide, 2 teacher layers, float16), with `data.cache_gb=0` and with the default cache. Memory
   is sampled every 50 ms over the process tree (the CLI and its DataLoader workers): the sum of
   their RSS (counts pages the workers share with the parent twice: an upper bound) and the sum
   of their PSS (shared pages split between the processes that map them: what the tree costs
   the machine), and the largest single-process peak from wait4 (ru_maxrss, exact).
   Targets: with cache 0, peak at 160 slides <= 1.2x the peak at 10 and <= 2 GB; with the
   default cache, peak <= cache_gb + 1.5 GB.
2. Epoch time at 10 slides (in this process): the teacher's training epochs (train_mil, 4 bags
   per batch) over the bags as the pre-store path held them (every slide's HR features as
   float32 in RAM, commit 0026be8's `load_cohort`), through the store with a warm cache, and
   through the store without a cache (data.workers=2 readers); interleaved rounds, medians.

The generated files (~34 MB per slide) are kept under --work for the next run; delete it after.
Writes bench/results/memory.md and memory.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import memory_cohort  # noqa: E402

RESULTS = Path(__file__).parent / "results"
PAGE = os.sysconf("SC_PAGE_SIZE")
MB = 2**20
DISTILL_SETTINGS = ["folds=2", "stage1.mode=adapter", "stage1.epochs=1", "teacher.epochs=1",
                    "student.epochs=1", "baseline.epochs=1", "teacher.min_epochs=1",
                    "student.min_epochs=1", "baseline.min_epochs=1"]


# ------------------------------------------------------------------------- process tree memory


def _tree(pid: int) -> list[int]:
    """`pid` and its descendants (from /proc/<pid>/task/*/children)."""
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        found.append(p)
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as fh:
                    todo += [int(c) for c in fh.read().split()]
        except OSError:
            continue
    return found


def _rss_pss(pid: int) -> tuple[int, int]:
    """(RSS, PSS) bytes of one process; (0, 0) if it is gone."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as fh:
            fields = {line.split(":")[0]: line.split()[1] for line in fh if ":" in line}
        return int(fields.get("Rss", 0)) * 1024, int(fields.get("Pss", 0)) * 1024
    except (OSError, ValueError, IndexError):
        return 0, 0


class TreeSampler:
    """Peaks of the summed RSS and PSS of a process tree, sampled every `interval` s."""

    def __init__(self, pid: int, interval: float = 0.05) -> None:
        self.pid, self.interval = pid, interval
        self.peak_rss = self.peak_pss = self.most_processes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            pids = _tree(self.pid)
            sizes = [_rss_pss(p) for p in pids]
            self.peak_rss = max(self.peak_rss, sum(s[0] for s in sizes))
            self.peak_pss = max(self.peak_pss, sum(s[1] for s in sizes))
            self.most_processes = max(self.most_processes, sum(1 for s in sizes if s[0]))
            self._stop.wait(self.interval)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def measure_distill(features: Path, labels: Path, out: Path, overrides: list[str]
                    ) -> dict[str, float]:
    """Run `lrmil distill` and return its wall time and memory peaks (MB)."""
    shutil.rmtree(out, ignore_errors=True)
    lrmil = Path(sys.executable).parent / "lrmil"
    cmd = [str(lrmil), "distill", "--features", str(features), "--labels", str(labels),
           "--out", str(out), *DISTILL_SETTINGS, *overrides]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    sampler = TreeSampler(proc.pid)
    output = proc.stdout.read() if proc.stdout else ""
    _, status, usage = os.wait4(proc.pid, 0)
    sampler.stop()
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{output[-3000:]}")
    return {"seconds": time.perf_counter() - start, "tree_rss_mb": sampler.peak_rss / MB,
            "tree_pss_mb": sampler.peak_pss / MB, "max_process_mb": usage.ru_maxrss / 1024,
            "processes": sampler.most_processes}


# ---------------------------------------------------------------------------------- epochs


def epoch_times(features: Path, labels: Path, rounds: int, epochs: int) -> dict[str, list[float]]:
    """Seconds per teacher epoch on every slide (module doc 2), per path, interleaved."""
    import torch

    from lrmil.data.store import FeatureStore, default_cache_bytes
    from lrmil.distill.bags import BagSet
    from lrmil.distill.cohort import load_cohort
    from lrmil.distill.config import MILConfig, TrainConfig
    from lrmil.distill.teacher import hr_bags
    from lrmil.distill.train import build_mil, train_mil

    class InRam(BagSet):
        """The bags read once into RAM as float32 (the path before the store)."""

        def __init__(self, bags: BagSet) -> None:
            super().__init__(bags.store, bags.names, bags.labels, bags.keys, bags.make)
            self.held = [replace(bag, features=bag.features.float()) for bag in bags.bags()]

        def bags(self, order=None):
            order = range(len(self.held)) if order is None else order
            for i in order:
                yield self.held[i]

    torch.set_num_threads(1)  # a shared 2-core machine: one core, steadier timings
    cfg = TrainConfig(epochs=epochs, min_epochs=epochs, batch_bags=4)
    cohorts = {
        "in RAM (pre-store path)": load_cohort(features, labels, FeatureStore()),
        "store, warm cache": load_cohort(features, labels, FeatureStore(default_cache_bytes(), 2)),
        "store, no cache": load_cohort(features, labels, FeatureStore(0, 2)),
    }
    sets = {}
    for path, cohort in cohorts.items():
        names = cohort.names
        bags = hr_bags(cohort, names)
        if path.startswith("in RAM"):
            bags = InRam(bags)
        else:
            bags.input_stats()  # the first read (fills the cache where there is one)
        sets[path] = bags
    times: dict[str, list[float]] = {path: [] for path in sets}
    for _ in range(rounds):
        for path, bags in sets.items():
            stamps = [time.perf_counter()]
            model = build_mil(MILConfig(), cohorts[path].hr_dim, 2)
            train_mil(model, bags, bags, cfg, torch.device("cpu"), 0,
                      progress=lambda _e, _s, stamps=stamps: stamps.append(time.perf_counter()),
                      standardize=False)
            times[path] += [b - a for a, b in zip(stamps[:-1], stamps[1:], strict=True)]
    return times


# ---------------------------------------------------------------------------------- report


def machine() -> str:
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{platform.machine()}, {os.cpu_count()} cores, {ram:.0f} GiB RAM, CPU only"


FINDINGS = """
## What made it flat

- glibc raises its mmap threshold to the largest block freed (up to 32 MiB), so once the first
  slide's arrays were freed the next ones came from the heap, which fragments and is not
  trimmed: RSS grew ~2 MB per slide streamed (in-process probe, 160 slides: 855 MB -> 567 MB
  with the threshold fixed at 1 MiB by `FeatureStore`).
- DataLoader readers forked for every stream were forked from a process holding a training
  batch and kept its pages after the parent freed them: the two readers' PSS was 150 MB each
  in a 160-slide run (tree 829 MB). Started once by the first stream and kept (persistent
  workers), they are ~84 MB each, nearly all of it pages still shared with the parent (each
  reader's private dirty memory: ~14 MB).
- Bags keep their features as stored (float16) and `pack` widens them into the batch (one
  float32 copy a batch); prediction packs the training batch size (it packed 8 bags).
- What still grows from 10 to 160 slides is the largest training batch (4 bags of 5.3k-9.1k HR
  patches: a bigger cohort draws a larger largest batch), not the cohort.
"""


def summarise(data: dict) -> str:
    lines = ["# Memory of `lrmil distill` (issue 10)", "",
             f"Machine: {data['machine']}; shared with other jobs, run under `nice -n 10` "
             f"(load average {data['load_before']} before, {data['load_after']} after).",
             "Commands (in order; each adds or replaces its rows):",
             *[f"`{c}`" for c in data["commands"]], "",
             f"Cohort: bench/memory_cohort.py, 768-d float16 features, ~7.1k HR patches per "
             f"slide (LR = HR / 16), 2 teacher layers of 768; {data['mb_per_slide']:.0f} MB per "
             "slide on disk. `lrmil distill " + " ".join(DISTILL_SETTINGS) + "`. Default cache "
             f"here: {data['default_cache_gb']:.1f} GB.", "",
             "Memory is the peak over the process tree (the CLI and its DataLoader workers), "
             "sampled every 50 ms: summed PSS (shared pages split: what the tree costs) and "
             "summed RSS (shared pages counted in every process: an upper bound); `largest "
             "process` is the exact peak of one process (wait4 ru_maxrss).", "",
             "| slides | data.cache_gb | peak PSS (MB) | peak RSS sum (MB) | largest process (MB) "
             "| processes | wall (s) |", "|---|---|---|---|---|---|---|"]
    for row in data["runs"]:
        lines.append(f"| {row['slides']} | {row['cache']} | {row['tree_pss_mb']:.0f} | "
                     f"{row['tree_rss_mb']:.0f} | {row['max_process_mb']:.0f} | "
                     f"{row['processes']} | {row['seconds']:.0f} |")
    lines += ["", "Targets:", *[f"- {v}" for v in data["verdicts"]]]
    if data.get("epochs"):
        lines += ["", f"Teacher epoch time at {data['epoch_slides']} slides (train_mil, every "
                  f"slide, 4 bags per batch, 1 torch thread; {data['epoch_rounds']} interleaved "
                  f"rounds of {data['epoch_count']} epochs, median):", "",
                  "| path | median epoch (s) | vs in RAM |", "|---|---|---|"]
        base = statistics.median(data["epochs"]["in RAM (pre-store path)"])
        for path, values in data["epochs"].items():
            med = statistics.median(values)
            lines.append(f"| {path} | {med:.2f} | {med / base:.2f}x |")
    return "\n".join(lines) + "\n" + FINDINGS


def verdicts(runs: list[dict], default_cache_gb: float) -> list[str]:
    def peak(n: int, cache: str) -> float | None:
        found = [r["tree_pss_mb"] for r in runs if r["slides"] == n and r["cache"] == cache]
        return found[0] if found else None

    out: list[str] = []
    if not runs:
        return out
    small, big = peak(min(r["slides"] for r in runs), "0"), peak(160, "0")
    if small and big:
        ratio = "met" if big <= 1.2 * small else "NOT met"
        out.append(f"cache 0: peak PSS at 160 slides {big:.0f} MB = {big / small:.2f}x the "
                   f"smallest cohort's (target <= 1.2x: {ratio}), <= 2 GB: "
                   f"{'met' if big <= 2048 else 'NOT met'}")
    limit = (default_cache_gb + 1.5) * 1024
    worst = max((r["tree_pss_mb"] for r in runs if r["cache"] == "default"), default=None)
    if worst:
        out.append(f"default cache: highest peak PSS {worst:.0f} MB, limit cache_gb + 1.5 GB = "
                   f"{limit:.0f} MB: {'met' if worst <= limit else 'NOT met'}")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/lrmil-memory"))
    parser.add_argument("--slides", type=int, nargs="+", default=[10, 40, 160])
    parser.add_argument("--caches", nargs="*", default=["0", "default"],
                        help="data.cache_gb of the runs (default: the default cache)")
    parser.add_argument("--epoch-rounds", type=int, default=3, help="0: skip the epoch timing")
    parser.add_argument("--epochs", type=int, default=3, help="teacher epochs per round")
    parser.add_argument("--out", type=Path, default=RESULTS / "memory")
    args = parser.parse_args()
    from lrmil.data.store import GIB, default_cache_bytes

    out_json = args.out.with_suffix(".json")
    # Runs of an earlier invocation are kept (one run per slides x cache, the latest wins), so
    # the table can be filled by several invocations.
    data: dict = json.loads(out_json.read_text()) if out_json.exists() else {"runs": []}
    data.update(machine=machine(), default_cache_gb=default_cache_bytes() / GIB,
                load_before=" ".join(f"{x:.1f}" for x in os.getloadavg()))
    data.setdefault("commands", [])
    data["commands"] = [*data["commands"], "nice -n 10 .venv/bin/python bench/memory.py "
                        + " ".join(sys.argv[1:])]
    views = {n: memory_cohort.cohort_view(args.work, n) for n in args.slides}
    data["mb_per_slide"] = memory_cohort.disk_bytes(args.work, max(args.slides)) / MB / max(
        args.slides)

    def save() -> None:
        data["load_after"] = " ".join(f"{x:.1f}" for x in os.getloadavg())
        data["runs"].sort(key=lambda r: (r["slides"], r["cache"]))
        data["verdicts"] = verdicts(data["runs"], data["default_cache_gb"])
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.with_suffix(".md").write_text(summarise(data))
        out_json.write_text(json.dumps(data, indent=1))

    for cache in args.caches:
        for n in args.slides:
            overrides = [] if cache == "default" else [f"data.cache_gb={cache}"]
            row = {"slides": n, "cache": cache,
                   **measure_distill(*views[n], args.work / f"run_n{n}_cache-{cache}", overrides)}
            data["runs"] = [r for r in data["runs"] if (r["slides"], r["cache"]) != (n, cache)]
            data["runs"].append(row)
            print(json.dumps(row), flush=True)
            save()
    if args.epoch_rounds:
        n = min(args.slides)
        data.update(epochs=epoch_times(*views[n], args.epoch_rounds, args.epochs),
                    epoch_slides=n, epoch_rounds=args.epoch_rounds, epoch_count=args.epochs)
    for cache in args.caches:
        for n in args.slides:
            shutil.rmtree(args.work / f"run_n{n}_cache-{cache}", ignore_errors=True)
    save()
    print(summarise(data))


if __name__ == "__main__":
    main()
