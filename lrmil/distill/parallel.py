"""Folds across torchrun ranks: `torchrun --nproc-per-node N --no-python lrmil distill ...`.

MIL training is I/O- and latency-bound, so one fold per rank is the win (the maintainers of CLAM
and slideflow found no gain from DDP there). Rank 0 decides which folds are still to train and
deals them out in turn (the i-th missing fold to rank i % N); every rank gets rank 0's plan, so
they agree even if the run folder changes meanwhile. Only a fold's owner writes fold_<k>/; rank
0 writes config.json and splits.csv before the folds start and the report after every rank has
finished (the runner's Group: a rank that died is named). Each step seeds itself from (seed,
fold, step), never from the rank, so the models are those of a one-process run.

Every process, torchrun rank or not, leaves the runner's record RUN/runs/<start>-<host>-<pid>.json
(settings, versions, status, the folds it trained).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from types import TracebackType
from typing import Any

import torch

from lrmil.runner.distributed import Group, Ranks
from lrmil.runner.record import RunRecord, run_id

# How long a rank waits for the others: at the end the wait is up to one fold's training (hours
# on a large cohort), not one slide's as in tile/embed/infer, hence a longer default.
WAIT_S = float(os.environ.get("LRMIL_DIST_TIMEOUT_S", 24 * 3600))


def deal(pending: list[int], world: int) -> list[list[int]]:
    """The folds of each rank: the i-th pending fold to rank i % world."""
    return [pending[rank::world] for rank in range(world)]


class FoldRanks:
    """The processes of one distill run and the folds of this one. A context manager: inside
    it, under torchrun, this process is in the run's process group."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.ranks = Ranks.from_env()
        self.run = run_id(time.time())
        self.clock = time.perf_counter()
        self.group: Group | None = None
        self.record: RunRecord | None = None
        self.notes: list[str] = []

    @property
    def main(self) -> bool:
        """Whether this process writes what belongs to the whole run (config, splits, report)."""
        return self.ranks.rank == 0

    def __enter__(self) -> FoldRanks:
        if self.ranks.launcher == "torchrun":
            self.group = Group(self.ranks, self.run, work="folds", timeout_s=WAIT_S)
        return self

    def share(self, pending: list[int], settings: dict[str, Any]) -> list[int]:
        """This rank's folds among `pending` (rank 0's list is the one dealt out). Every rank
        calls it once rank 0 has written the run folder's config: the others wait for rank 0
        here. Writes this process's run record."""
        plan = [pending]
        if self.group is not None:
            self.group.dist.broadcast_object_list(plan, src=0)
        self.record = RunRecord(self.root, "distill", self.run, settings, self.ranks.rank,
                                self.ranks.world, None,
                                group=self.group.name if self.group else self.run)
        if self.group is not None:
            self.group.exchange(self.record.path)
        mine = deal(plan[0], self.ranks.world)[self.ranks.rank]
        # torchrun gives each rank one thread unless OMP_NUM_THREADS is set: say what it got.
        threads = torch.get_num_threads()
        who = f"rank {self.ranks.rank} of {self.ranks.world}: " if self.ranks.world > 1 else ""
        self.notes.append(f"{who}folds {', '.join(map(str, mine)) or 'none'} "
                          f"({threads} torch thread{'s' if threads > 1 else ''})")
        return mine

    def finished(self) -> None:
        """This rank's folds are done: record it, then wait for every rank (rank 0 raises
        RankFailed naming one that died)."""
        assert self.record is not None, "share() comes first"
        self.record.finish("finished", [], time.perf_counter() - self.clock, self.notes)
        if self.group is not None:
            self.group.wait()

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 _tb: TracebackType | None) -> None:
        if kind is not None and self.record is not None and \
                self.record.data["status"] == "running":
            status = "interrupted" if issubclass(kind, KeyboardInterrupt) else "failed"
            self.record.finish(status, [], time.perf_counter() - self.clock,
                               [*self.notes, f"{kind.__name__}: {exc}"])
        if self.group is not None:
            self.group.close()
