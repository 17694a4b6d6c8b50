"""Several processes on one slide list: torchrun ranks (RANK / WORLD_SIZE / LOCAL_RANK) and
`--shard i/n` (SLURM arrays and other schedulers).

The slides are split into balanced shares by file size (deterministic, the same in every
process). A torchrun rank that finishes its share goes on with the slides other ranks have not
started (from the ends of their shares; claims keep each slide to one rank), then rank 0 waits
for every rank (a gloo barrier, watching that the others still run) and reports for all.
Shards are static: a SLURM task does its share and nothing else. torch.distributed is only
imported when WORLD_SIZE > 1.
"""

from __future__ import annotations

import heapq
import os
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from lrmil.errors import ConfigError, LrmilError
from lrmil.utils.processes import ProcessId, is_running, on_this_host, this_process

if TYPE_CHECKING:
    from lrmil.runner.record import RunSummary

T = TypeVar("T")
# How long rank 0 waits at the end for ranks that are alive but still working.
TIMEOUT_S = float(os.environ.get("LRMIL_DIST_TIMEOUT_S", 3600))
POLL_S = 0.2


class RankFailed(LrmilError):
    """A rank died or stopped answering before it finished its slides."""


@dataclass(frozen=True)
class Ranks:
    rank: int
    world: int
    local_rank: int
    launcher: str  # "single", "torchrun" or "shard"

    @classmethod
    def from_env(cls, shard: str | None = None) -> Ranks:
        world = _env_int("WORLD_SIZE", 1)
        if world > 1:
            if shard is not None:
                raise ConfigError("--shard splits the work (slides, or distill's folds) "
                                  "without torchrun; under torchrun (WORLD_SIZE > 1) leave it out")
            rank, local = _env_int("RANK", 0), _env_int("LOCAL_RANK", 0)
            if not 0 <= rank < world:
                raise ConfigError(f"RANK={rank} is not in 0..WORLD_SIZE-1 ({world - 1})")
            return cls(rank, world, local, "torchrun")
        if shard is None:
            return cls(0, 1, 0, "single")
        index, count = parse_shard(shard)
        return cls(index, count, 0, "shard")


def parse_shard(text: str) -> tuple[int, int]:
    """'i/n' (0 <= i < n) -> (i, n)."""
    head, sep, tail = text.partition("/")
    try:
        index, count = int(head), int(tail)
    except ValueError:
        index, count = -1, 0
    if not sep or count < 1 or not 0 <= index < count:
        raise ConfigError(f"--shard must be I/N with 0 <= I < N (e.g. 0/4), got {text!r}")
    return index, count


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "")
    if not value:
        return default
    try:
        return int(value)
    except ValueError:
        raise ConfigError(f"environment variable {name}={value!r} is not an integer") from None


def split_by_size(items: list[T], n: int) -> list[list[T]]:
    """`n` shares of about equal total size (`item.size`): largest first, each to the share
    with the least so far (ties: lower index). Within a share, largest first."""
    order = sorted(range(len(items)), key=lambda i: (-items[i].size, i))  # type: ignore[attr-defined]
    heap = [(0, k) for k in range(n)]
    shares: list[list[T]] = [[] for _ in range(n)]
    for i in order:
        total, k = heapq.heappop(heap)
        shares[k].append(items[i])
        heapq.heappush(heap, (total + items[i].size, k))  # type: ignore[attr-defined]
    return shares


def interleave_from_ends(shares: list[list[T]], rank: int) -> list[T]:
    """The other shares' items, last first, taking one from each share in turn (starting
    with the next rank): what their owners would reach last."""
    others = [shares[(rank + k) % len(shares)][::-1] for k in range(1, len(shares))]
    return [s[j] for j in range(max(map(len, others), default=0)) for s in others if j < len(s)]


def teams(world: int, count: int) -> list[list[int]]:
    """`world` ranks in `count` teams of consecutive ranks, sizes differing by at most one
    (larger first): torchrun numbers a node's ranks consecutively, so a team stays on one node
    where it can and its collectives on the node's links."""
    size, extra = divmod(world, count)
    starts = [i * size + min(i, extra) for i in range(count + 1)]
    return [list(range(starts[i], starts[i + 1])) for i in range(count)]


def rank_device(requested: str, local_rank: int = 0, setting: str = "--device") -> str:
    """The torch device of this process from a --device value: 'auto' is cuda where torch sees
    one, else cpu; a bare 'cuda' under torchrun is this rank's GPU, cuda:LOCAL_RANK. A device
    that does not exist here is refused in one line naming `setting`."""
    import torch

    text = requested.strip().lower()
    if text == "auto":
        text = "cuda" if torch.cuda.is_available() else "cpu"
    kind, _, index = text.partition(":")
    if kind not in ("cpu", "cuda") or (index and not index.isdigit()) or (kind == "cpu" and index):
        raise ConfigError(f"{setting} must be auto, cpu, cuda or cuda:N, got {requested!r}")
    if kind == "cpu":
        return "cpu"
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if count == 0:
        raise ConfigError(f"{setting} {requested}: torch sees no CUDA device here "
                          f"(use {setting} cpu, or auto)")
    if not index:
        return f"cuda:{local_rank % count}" if _env_int("WORLD_SIZE", 1) > 1 else "cuda"
    if int(index) >= count:
        raise ConfigError(f"{setting} {requested}: torch sees {count} CUDA device(s)")
    return text


class Group:
    """The torchrun ranks of one run, over a gloo process group."""

    def __init__(self, ranks: Ranks, run: str, work: str = "slides",
                 timeout_s: float = TIMEOUT_S) -> None:
        """`work`: what the ranks share out, as failure messages name it ("slides", "folds");
        `timeout_s`: how long a rank waits for the others (the gloo timeout)."""
        import torch.distributed as dist

        self.dist, self.ranks, self.work, self.timeout_s = dist, ranks, work, timeout_s
        try:
            dist.init_process_group("gloo", timeout=timedelta(seconds=timeout_s))
        except (RuntimeError, ValueError) as exc:
            raise ConfigError(f"torchrun rank {ranks.rank}: cannot join the process group "
                              f"({str(exc).splitlines()[0]})") from None
        names = [run]
        dist.broadcast_object_list(names, src=0)
        self.name = names[0]  # rank 0's run id names the whole run
        self.members: list[tuple[ProcessId, Path]] = []

    def exchange(self, record: Path) -> None:
        """Every rank learns every rank's process and run record."""
        mine = (this_process().as_dict(), str(record))
        gathered: list[Any] = [None] * self.ranks.world
        self.dist.all_gather_object(gathered, mine)
        self.members = [(ProcessId.from_dict(p), Path(r)) for p, r in gathered]

    def split(self, teams: list[list[int]], backend: str = "gloo") -> Any:
        """This rank's process group among `teams` (disjoint lists of ranks covering every
        rank) on `backend` ("gloo", or "nccl" for CUDA tensors). Every rank calls it with the
        same teams: creating a group is collective."""
        mine, _ = self.dist.new_subgroups_by_enumeration(
            teams, timeout=timedelta(seconds=self.timeout_s), backend=backend)
        return mine

    def agree(self, value: T, src: int, group: Any = None) -> T:
        """`src`'s `value` on every rank of `group` (a gloo group from `split`; default: the
        whole run): the others wait here until `src` gets here. RankFailed names `src` when
        it stops answering."""
        box = [value]
        try:
            self.dist.broadcast_object_list(box, src=src, group=group)
        except RuntimeError:
            raise RankFailed(f"rank {self.ranks.rank}: rank {src} ({self.members[src][0]}) "
                             f"stopped answering; the {self.work} it held are incomplete: run "
                             "the same command again to do what is missing") from None
        return box[0]

    def finish(self, summary: RunSummary) -> None:
        """Rank 0 waits for the others and adds their results to `summary`; the others wait
        for rank 0. RankFailed names a rank that died or stopped answering."""
        try:
            self.wait()
            if self.ranks.rank == 0:
                self._take_in(summary)
        finally:
            self.close()

    def wait(self) -> None:
        """Every rank waits until every rank got here: rank 0 watching that the others still
        run (RankFailed names one that died), the others waiting for rank 0."""
        if self.ranks.rank == 0:
            self._wait_for_all()
            return
        try:
            self.dist.barrier()
        except RuntimeError:
            raise RankFailed(f"rank {self.ranks.rank}: rank 0 ({self.members[0][0]}) "
                             "stopped answering; the run is incomplete") from None

    def close(self) -> None:
        if self.dist.is_initialized():
            self.dist.destroy_process_group()

    def _wait_for_all(self) -> None:
        from lrmil.runner.record import read_record

        work = self.dist.barrier(async_op=True)
        deadline = time.monotonic() + self.timeout_s
        while not work.is_completed():
            dead = self._dead_ranks(read_record)
            if dead:
                raise RankFailed(self._failure(dead, f"died before finishing its {self.work}"))
            if time.monotonic() > deadline:
                break
            time.sleep(POLL_S)
        try:
            work.wait()
        except RuntimeError as exc:
            dead = self._dead_ranks(read_record) or self._unfinished(read_record)
            what = "stopped answering" if dead else "failed"
            raise RankFailed(self._failure(dead, what, str(exc).splitlines()[0])) from None

    def _dead_ranks(self, read_record: Any) -> list[int]:
        return [r for r in self._unfinished(read_record)
                if on_this_host(self.members[r][0]) and not is_running(self.members[r][0])]

    def _unfinished(self, read_record: Any) -> list[int]:
        unfinished = []
        for rank, (_proc, record) in enumerate(self.members):
            try:
                status = read_record(record).get("status")
            except (OSError, ValueError):
                status = None
            if status != "finished":
                unfinished.append(rank)
        return unfinished

    def _failure(self, ranks: list[int], what: str, detail: str = "") -> str:
        names = ", ".join(f"rank {r} ({self.members[r][0]})" for r in ranks) or "a rank"
        extra = f" ({detail})" if detail else ""
        return (f"{names} {what}{extra}; the {self.work} it held are incomplete: run the same "
                "command again to do what is missing")

    def _take_in(self, summary: RunSummary) -> None:
        from lrmil.runner.record import read_record, results_of

        for rank, (_proc, path) in enumerate(self.members):
            if rank == 0:
                continue
            record = read_record(path)
            summary.results += results_of(record)
            summary.notes += [f"rank {rank}: {note}" for note in record.get("notes", [])]
            summary.records.append(path)
            summary.seconds = max(summary.seconds, float(record.get("seconds") or 0.0))
