"""`run_slides`: the per-slide loop of tile, embed and infer.

slide list -> (this rank's share) -> is the output current? -> claim -> work -> the job writes
its outputs atomically -> release the claim -> result; then the run record, errors.csv and the
summary. A command supplies a `SlideJob`: how to tell whether a slide's output is current, and
the work itself (which raises on failure: one bad slide never stops the others).
"""

from __future__ import annotations

import multiprocessing
import os
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from lrmil.errors import LrmilError
from lrmil.runner.claims import Claim, Claims
from lrmil.runner.distributed import Group, Ranks, interleave_from_ends, split_by_size
from lrmil.runner.identity import resolve
from lrmil.runner.record import RunRecord, RunSummary, SlideResult, run_id, update_errors
from lrmil.utils.atomic import remove_stale_temps
from lrmil.utils.paths import check_out_dir
from lrmil.utils.processes import worker_initializer
from lrmil.utils.progress import SlideProgress


@dataclass(frozen=True)
class SlideItem:
    """One slide (or, for embed, one coords file) of a run."""

    name: str  # outputs are named by it
    path: Path  # resolved
    size: int  # bytes (0 when missing): how shares are balanced


@dataclass(frozen=True)
class Existing:
    """What the outputs of one slide say about themselves."""

    output: str = ""  # the output file that records its input (named in messages)
    source: str | None = None  # the resolved input path it records; None: no output yet
    current: bool = False  # complete, and made from this input file with these settings


@dataclass(frozen=True)
class Done:
    patches: int = 0
    note: str = ""


class SlideJob(Protocol):
    """One command's per-slide work. Jobs run in worker processes are pickled."""

    def existing(self, item: SlideItem) -> Existing: ...

    def work(self, item: SlideItem, bar: SlideProgress) -> Done: ...


def slide_items(paths: Sequence[Path], name_of: Any = None) -> list[SlideItem]:
    """SlideItems of resolved paths (`name_of(path)`: the output name, default the stem)."""
    items = []
    for path in paths:
        try:
            size = path.stat().st_size
        except OSError:
            size = 0
        items.append(SlideItem(name_of(path) if name_of else path.stem, resolve(path), size))
    return items


def run_slides(
    command: str,
    items: Sequence[SlideItem],
    job: SlideJob,
    out_dir: Path,
    *,
    overwrite: bool = False,
    workers: int = 1,
    progress: bool = False,
    settings: dict[str, Any] | None = None,
    shard: str | None = None,
    notes: Sequence[str] = (),
) -> RunSummary:
    """Run `job` over `items` (one process, or this rank's / shard's share of them) into
    `out_dir`. `workers` > 1 runs the work in that many worker processes (the job is pickled).
    Returns the summary; under torchrun rank 0's covers every rank."""
    out_dir = check_out_dir(out_dir)
    ranks = Ranks.from_env(shard)
    started = time.time()
    clock = time.perf_counter()
    run = run_id(started)
    notes = list(notes)
    removed = remove_stale_temps(out_dir)
    if removed:
        notes.append(f"removed {len(removed)} temporary file(s) left by dead processes")
    group = Group(ranks, run) if ranks.launcher == "torchrun" else None
    record = RunRecord(out_dir, command, run, settings or {}, ranks.rank, ranks.world,
                       shard, group=group.name if group else run)
    if group is not None:
        group.exchange(record.path)
    shares = split_by_size(list(items), ranks.world) if ranks.world > 1 else [list(items)]
    mine = shares[ranks.rank]
    stolen = (interleave_from_ends(shares, ranks.rank) if ranks.launcher == "torchrun"
              else [])
    results: list[SlideResult] = []
    status = "failed"
    try:
        with Claims(out_dir, run) as claims, SlideProgress(progress, len(mine), command) as bar:
            attempts = _Attempts(job, claims, overwrite, ranks.rank)
            source = attempts.plan(mine, stolen)
            runner = _run_pooled if workers > 1 else _run_here
            for result in runner(source, job, claims, bar, workers, ranks.rank):
                results.append(result)
                bar.slide_done()
            notes += attempts.notes
        status = "finished"
    except KeyboardInterrupt:
        status = "interrupted"
        raise
    finally:
        seconds = time.perf_counter() - clock
        record.finish(status, results, seconds, notes)
        if status != "finished" and group is not None:
            group.close()
    update_errors(out_dir, results, run)
    summary = RunSummary(command, out_dir, results, seconds, notes, [record.path], ranks.rank,
                         ranks.world, coordinated=group is not None)
    if group is not None:
        group.finish(summary)  # rank 0: waits for every rank and takes in their results
    return summary


class _Attempts:
    """Decides, slide by slide, what this process does: skip, refuse, or claim and work."""

    def __init__(self, job: SlideJob, claims: Claims, overwrite: bool, rank: int) -> None:
        self.job, self.claims, self.overwrite, self.rank = job, claims, overwrite, rank
        self.notes: list[str] = []

    def plan(self, mine: list[SlideItem], stolen: list[SlideItem]
             ) -> Iterator[SlideResult | tuple[SlideItem, Claim]]:
        """This process's share, then (torchrun) what other ranks have not started yet; then
        a second look at slides claimed elsewhere whose claim has since gone stale."""
        busy = []
        for item in mine:
            outcome = self.decide(item)
            if isinstance(outcome, SlideResult) and outcome.status == "claimed-elsewhere":
                busy.append((item, outcome))
                continue
            yield outcome
        for item in stolen:  # quietly: the rank that owns it reports whatever else happens
            outcome = self.decide(item)
            if not isinstance(outcome, SlideResult):
                yield outcome
        for item, first in busy:
            if self.claims.holder(item.name) is not None:
                yield first  # still in hand elsewhere
                continue
            outcome = self.decide(item)  # released since, or its owner died
            done_there = isinstance(outcome, SlideResult) and outcome.status == "skipped"
            yield first if done_there else outcome

    def decide(self, item: SlideItem) -> SlideResult | tuple[SlideItem, Claim]:
        verdict = self._check(item)
        if verdict is not None:
            return verdict
        claim = self.claims.acquire(item.name, str(item.path))
        if not isinstance(claim, Claim):
            return SlideResult(item.name, str(item.path), "claimed-elsewhere",
                               note=f"claimed by {claim.owner}", rank=self.rank)
        if claim.note:
            self.notes.append(f"{item.name}: {claim.note}")
        verdict = self._check(item)  # it may have been completed while we looked
        if verdict is not None:
            self.claims.release(claim)
            return verdict
        return item, claim

    def _check(self, item: SlideItem) -> SlideResult | None:
        try:
            existing = self.job.existing(item)
        except Exception as exc:  # an unreadable output is redone; anything else is reported
            return _failed(item, exc, 0.0, self.rank)
        if existing.source is not None and existing.source != str(item.path) and not \
                self.overwrite:
            error = (f"{existing.output} was made from {existing.source}, not {item.path}: "
                     f"two slides named {item.name!r}; rename one, or --overwrite to replace it")
            return SlideResult(item.name, str(item.path), "failed", error=error, rank=self.rank)
        if existing.current and not self.overwrite:
            return SlideResult(item.name, str(item.path), "skipped", rank=self.rank)
        return None


def work_one(job: SlideJob, item: SlideItem, bar: SlideProgress, rank: int = 0) -> SlideResult:
    """Run the job on one slide; any failure becomes a failed result naming the slide."""
    start = time.perf_counter()
    try:
        done = job.work(item, bar)
    except Exception as exc:
        return _failed(item, exc, time.perf_counter() - start, rank)
    return SlideResult(item.name, str(item.path), "ok", done.patches,
                       time.perf_counter() - start, note=done.note, rank=rank)


def _failed(item: SlideItem, exc: BaseException, seconds: float, rank: int) -> SlideResult:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    if isinstance(exc, (LrmilError, OSError)):  # these name their file
        error = text or f"{item.path}: {type(exc).__name__}"
    else:  # a reader or library bug on an odd file: report it with its type
        error = f"{item.path}: unexpected {type(exc).__name__}: {text}"
    return SlideResult(item.name, str(item.path), "failed", seconds=seconds, error=error,
                       rank=rank)


def _run_here(source: Iterator[SlideResult | tuple[SlideItem, Claim]], job: SlideJob,
              claims: Claims, bar: SlideProgress, _workers: int, rank: int
              ) -> Iterator[SlideResult]:
    for outcome in source:
        if isinstance(outcome, SlideResult):
            yield outcome
            continue
        item, claim = outcome
        try:
            yield _with_note(work_one(job, item, bar, rank), claim)
        finally:
            claims.release(claim)


class _EagerPool(ProcessPoolExecutor):
    """Starts all its workers with the first task. CPython (3.11) otherwise spawns them on
    demand inside submit(): when a worker dies meanwhile, a worker spawned after the pool broke
    is never terminated and shutdown() waits for it forever."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._safe_to_dynamically_spawn_children = False


def worker_pool(workers: int) -> ProcessPoolExecutor:
    """A pool whose workers die with this process (SIGKILL included) and ignore Ctrl-C."""
    return _EagerPool(max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
                      initializer=worker_initializer, initargs=(os.getpid(),))


def _run_pooled(source: Iterator[SlideResult | tuple[SlideItem, Claim]], job: SlideJob,
                claims: Claims, bar: SlideProgress, workers: int, rank: int
                ) -> Iterator[SlideResult]:
    """The work in `workers` processes, at most `workers` slides claimed at a time (so other
    processes sharing the folder get the rest). A worker that dies (a native reader crash)
    breaks the pool: the slides it held are retried one by one in processes of their own,
    then a fresh pool goes on."""
    quiet = SlideProgress(False, 0)
    pool = worker_pool(workers)
    running: dict[Future[SlideResult], tuple[SlideItem, Claim]] = {}
    exhausted = False
    try:
        while True:
            retry: list[tuple[SlideItem, Claim]] = []
            while not exhausted and len(running) < workers and not retry:
                outcome = next(source, None)
                if outcome is None:
                    exhausted = True
                elif isinstance(outcome, SlideResult):
                    yield outcome
                else:
                    try:
                        running[pool.submit(work_one, job, outcome[0], quiet, rank)] = outcome
                    except (BrokenProcessPool, RuntimeError):
                        retry.append(outcome)
            if not running and not retry:
                return
            done, _ = wait(running, return_when=FIRST_COMPLETED) if running else (set(), None)
            for future in done:
                item, claim = running.pop(future)
                try:
                    result = future.result()
                except BrokenProcessPool:
                    retry.append((item, claim))
                    continue
                claims.release(claim)
                bar.patches(result.patches)
                yield _with_note(result, claim)
            if retry:
                retry += running.values()  # the pool is broken: none of these will finish
                running.clear()
                pool.shutdown(wait=True, cancel_futures=True)
                for item, claim in retry:
                    result = _isolated(job, item, rank)
                    claims.release(claim)
                    yield _with_note(result, claim)
                pool = worker_pool(workers)
    finally:
        # On Ctrl-C or an error: running slides finish, nothing new starts.
        pool.shutdown(wait=True, cancel_futures=True)


def _isolated(job: SlideJob, item: SlideItem, rank: int) -> SlideResult:
    """One slide in a process of its own, so that a crash is pinned on that slide."""
    with worker_pool(1) as pool:
        try:
            return pool.submit(work_one, job, item, SlideProgress(False, 0), rank).result()
        except BrokenProcessPool:
            error = f"{item.path}: the worker process died while working on it (a native crash?)"
            return SlideResult(item.name, str(item.path), "failed", error=error, rank=rank)


def _with_note(result: SlideResult, claim: Claim) -> SlideResult:
    if claim.note:
        result.note = "; ".join(n for n in (result.note, claim.note) if n)
    return result
