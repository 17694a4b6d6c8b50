"""Folds across processes: torchrun ranks (`torchrun --nproc-per-node N --no-python lrmil
distill ...`) or shards without a process group (`lrmil distill --shard i/n`, SLURM arrays).

MIL training is I/O- and latency-bound, so one fold per process is the win (the maintainers of
CLAM and slideflow found no gain from DDP there). Under torchrun rank 0 decides which folds are
still to train and every rank gets its plan, so they agree even if the run folder changes
meanwhile. With at least as many folds to train as ranks, the folds are dealt out in turn (the
i-th to rank i % N). With fewer, the ranks form one team of consecutive ranks per fold: the
team trains the fold's stage 1, the GPU-heavy part, together under DistributedDataParallel
(lrmil.distill.stage1.Replicas; gloo on the CPU, nccl on CUDA), and its first rank, the fold's
owner, trains the rest. Only a fold's owner writes fold_<k>/; rank 0 writes config.json and
splits.csv before the folds start and the report after every rank has finished (the runner's
Group: a rank that died is named).

Shard i of n trains the folds dealt to it out of all the folds (the i-th to shard i % n, done or
not, so that a shard started later, or again after a crash, gets the same ones) and skips what
is done. Whichever shard finds every fold complete at its end writes the final model, the
calibration and the report, under a claim on them (lrmil.runner.claims): exactly one does.

Each step seeds itself from (seed, fold, step), never from the rank, so the models are those of
a one-process run. Every process leaves the runner's record RUN/runs/<start>-<host>-<pid>.json
(settings, versions, status, and in its notes the folds it trained).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import torch

from lrmil.distill.stage1 import Replicas, Stage1Part
from lrmil.runner.claims import Claim, Claims
from lrmil.runner.distributed import Group, Ranks, teams
from lrmil.runner.record import RunRecord, run_id

T = TypeVar("T")
# How long a rank waits for the others: at the end the wait is up to one fold's training (hours
# on a large cohort), not one slide's as in tile/embed/infer, hence a longer default.
WAIT_S = float(os.environ.get("LRMIL_DIST_TIMEOUT_S", 24 * 3600))
REPORT_CLAIM = "report"  # RUN/.claims/report: the shard writing the final model and report


def deal(pending: list[int], world: int) -> list[list[int]]:
    """The folds of each rank: the i-th pending fold to rank i % world."""
    return [pending[rank::world] for rank in range(world)]


@dataclass(frozen=True)
class FoldTeam:
    """The processes that train one fold: the first, its owner, writes fold_<k>/ and trains the
    MIL models; all of them train its stage 1 together."""

    fold: int
    ranks: tuple[int, ...]
    rank: int  # this process's
    group: Group | None = None  # the run's, for the team's waits
    waits: Any = None  # the team's gloo process group
    reduces: Any = None  # the team's process group for DDP: nccl on CUDA, else `waits`
    note: Callable[[str], None] = field(default=lambda _line: None, repr=False)

    @classmethod
    def alone(cls, fold: int) -> FoldTeam:
        return cls(fold, (0,), 0)

    @property
    def owner(self) -> bool:
        return self.rank == self.ranks[0]

    def agree(self, value: T) -> T:
        """The owner's `value` on every member: the others wait for the owner here."""
        if self.group is None or len(self.ranks) == 1:
            return value
        return self.group.agree(value, self.ranks[0], self.waits)

    def replicas(self) -> Replicas:
        return Replicas(len(self.ranks), self.ranks.index(self.rank), self.reduces)

    def trained_stage1(self, part: Stage1Part) -> None:
        """Say in the run record how this rank took part in the fold's stage 1."""
        if len(self.ranks) == 1:
            return
        if part.processes == 1:
            self.note(f"fold {self.fold}: stage 1 on its owner alone (DDP needs "
                      "stage1.objective=mse, and on the CPU an encoder without BatchNorm)")
            return
        self.note(f"fold {self.fold}: stage 1 under DDP on ranks {_listed(self.ranks)}: "
                  f"{part.rows} training rows here")


class FoldRanks:
    """The processes of one distill run and the folds of this one. A context manager: inside
    it, under torchrun, this process is in the run's process group."""

    def __init__(self, root: Path, shard: str | None = None) -> None:
        self.root = root
        self.shard = shard
        self.ranks = Ranks.from_env(shard)
        self.run = run_id(time.time())
        self.clock = time.perf_counter()
        self.group: Group | None = None
        self.record: RunRecord | None = None
        self.notes: list[str] = []

    @property
    def prepares(self) -> bool:
        """Whether this process writes the run folder's config and splits before the folds:
        rank 0, or any shard (each may be the first to start)."""
        return self.ranks.rank == 0 or self.ranks.launcher == "shard"

    def __enter__(self) -> FoldRanks:
        if self.ranks.launcher == "torchrun":
            self.group = Group(self.ranks, self.run, work="folds", timeout_s=WAIT_S)
        return self

    def share(self, pending: list[int], every: list[int], settings: dict[str, Any],
              device: torch.device) -> list[FoldTeam]:
        """This process's folds, each with the team that trains it: of `pending` (rank 0's
        list is the one dealt out), or for a shard of `every` fold. Every rank calls it once
        rank 0 has written the run folder's config: the others wait for rank 0 here. Writes
        this process's run record."""
        plan = [pending]
        if self.group is not None:
            self.group.dist.broadcast_object_list(plan, src=0)
        self.record = RunRecord(self.root, "distill", self.run, settings, self.ranks.rank,
                                self.ranks.world, self.shard,
                                group=self.group.name if self.group else self.run)
        if self.group is not None:
            self.group.exchange(self.record.path)
        mine = self._teams(every if self.ranks.launcher == "shard" else plan[0], device)
        self.notes.append(f"{self._who()}{_describe(mine)} "
                          f"({_threads(torch.get_num_threads())})")
        return mine

    def finished(self) -> None:
        """This process's folds are done: record it, then wait for every rank (rank 0 raises
        RankFailed naming one that died)."""
        assert self.record is not None, "share() comes first"
        self.record.finish("finished", [], time.perf_counter() - self.clock, self.notes)
        if self.group is not None:
            self.group.wait()

    @contextlib.contextmanager
    def reporting(self, unfinished: Callable[[], list[int]], current: Callable[[], bool]
                  ) -> Iterator[str | None]:
        """After `finished`: None where this process writes the final model, calibration and
        report, else why not ("" on a torchrun rank other than 0). Under torchrun rank 0 does
        (every rank has finished), as one process always; a shard only when no fold is
        `unfinished()`, the report is not `current()` and it wins the claim on the report."""
        if self.ranks.launcher != "shard":
            yield None if self.ranks.rank == 0 else ""
            return
        missing = unfinished()
        if missing:
            yield self._noted(f"fold{'s' if len(missing) > 1 else ''} {_listed(missing)} not "
                              "complete: the shard that completes the last fold writes the report")
            return
        with Claims(self.root, self.run) as claims:
            claim = claims.acquire(REPORT_CLAIM, str(self.root))
            if not isinstance(claim, Claim):
                yield self._noted(f"the report is being written by {claim.owner}")
                return
            try:
                if current():  # written by another shard meanwhile
                    yield self._noted("the report is already written")
                    return
                yield None
                self._noted("wrote the final model, the calibration and the report")
            finally:
                claims.release(claim)

    def _noted(self, why: str) -> str:
        """Record `why` in this process's run record (written again) and return it."""
        assert self.record is not None, "finished() comes first"
        self.notes.append(why)
        self.record.finish("finished", [], time.perf_counter() - self.clock, self.notes)
        return f"{self._who()}{why}"

    def _teams(self, folds: list[int], device: torch.device) -> list[FoldTeam]:
        rank, world = self.ranks.rank, self.ranks.world
        if self.group is None or not folds or len(folds) >= world:
            return [FoldTeam(k, (rank,), rank, self.group, note=self.notes.append)
                    for k in deal(folds, world)[rank]]
        members = teams(world, len(folds))
        waits = self.group.split(members)  # every rank creates every team's groups
        if device.type == "cuda":
            torch.cuda.set_device(device)  # nccl talks through the current device
        reduces = self.group.split(members, "nccl") if device.type == "cuda" else waits
        j = next(j for j, team in enumerate(members) if rank in team)
        return [FoldTeam(folds[j], tuple(members[j]), rank, self.group, waits, reduces,
                         self.notes.append)]

    def _who(self) -> str:
        if self.ranks.world == 1:
            return ""
        kind = "shard" if self.ranks.launcher == "shard" else "rank"
        return f"{kind} {self.ranks.rank} of {self.ranks.world}: "

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 _tb: TracebackType | None) -> None:
        if kind is not None and self.record is not None:
            status = "interrupted" if issubclass(kind, KeyboardInterrupt) else "failed"
            self.record.finish(status, [], time.perf_counter() - self.clock,
                               [*self.notes, f"{kind.__name__}: {exc}"])
        if self.group is not None:
            self.group.close()


def _describe(mine: list[FoldTeam]) -> str:
    """This process's part: its folds, or its place in a fold's team."""
    if len(mine) == 1 and len(mine[0].ranks) > 1:
        team = mine[0]
        if team.owner:
            return f"fold {team.fold} with ranks {_listed(team.ranks)} (its stage 1 under DDP)"
        return (f"stage 1 of fold {team.fold} under DDP with ranks {_listed(team.ranks)} "
                f"(rank {team.ranks[0]} owns the fold)")
    return f"folds {', '.join(str(t.fold) for t in mine) or 'none'}"


def _listed(numbers: Sequence[int]) -> str:
    return ", ".join(map(str, numbers))


def _threads(n: int) -> str:
    # torchrun gives each rank one thread unless OMP_NUM_THREADS is set: say what it got.
    return f"{n} torch thread{'s' if n > 1 else ''}"
