"""The slide runner with a toy job (no slides): statuses, the run record, errors.csv, the
identity check, name collisions, shares and temporary files of dead processes."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from lrmil.errors import ConfigError
from lrmil.runner import Done, Existing, FileIdentity, SlideItem, run_slides, slide_items
from lrmil.runner.claims import Claims
from lrmil.runner.distributed import (
    Ranks,
    interleave_from_ends,
    parse_shard,
    split_by_size,
)
from lrmil.runner.identity import MTIME_TOLERANCE_S, resolve
from lrmil.utils.atomic import remove_stale_temps, temp_path_for
from lrmil.utils.processes import host
from lrmil.utils.progress import SlideProgress


@dataclass
class CopyJob:
    """Copies each input into OUT/<name>.txt with a JSON header recording the input."""

    out: Path
    done: list[str] = field(default_factory=list)

    def existing(self, item: SlideItem) -> Existing:
        target = self.out / f"{item.name}.txt"
        if not target.is_file():
            return Existing()
        recorded = FileIdentity(**json.loads(target.read_text().splitlines()[0]))
        current = FileIdentity.of(item.path).matches(recorded) if item.path.exists() else False
        return Existing(str(target), recorded.path, current)

    def work(self, item: SlideItem, bar: SlideProgress) -> Done:
        text = item.path.read_text()
        if "bad" in text:
            raise ValueError("bad content")
        header = json.dumps(FileIdentity.of(item.path).__dict__)
        (self.out / f"{item.name}.txt").write_text(f"{header}\n{text}")
        self.done.append(item.name)
        return Done(len(text))


def _inputs(folder: Path, texts: dict[str, str]) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in texts.items():
        (folder / f"{name}.svs").write_text(text)
    return [folder / f"{name}.svs" for name in texts]


def _record(out: Path) -> dict:
    (path,) = (out / "runs").glob("*.json")
    return json.loads(path.read_text())


def test_statuses_record_and_errors_csv(tmp_path):
    paths = _inputs(tmp_path / "in", {"a": "aaa", "b": "bad", "c": "cc"})
    out = tmp_path / "out"
    job = CopyJob(out)
    summary = run_slides("copy", slide_items(paths), job, out, settings={"x": 1})
    assert [(r.slide, r.status) for r in summary.results] == [
        ("a", "ok"), ("b", "failed"), ("c", "ok")]
    assert summary.patches == 5 and summary.failed == 1
    assert summary.results[1].error == f"{paths[1]}: unexpected ValueError: bad content"
    record = _record(out)
    assert record["status"] == "finished" and record["command"] == "copy"
    assert record["settings"] == {"x": 1} and record["versions"]["lrmil"]
    assert record["counts"] == {"ok": 2, "skipped": 0, "failed": 1, "claimed-elsewhere": 0}
    assert record["process"]["pid"] == os.getpid()
    assert [s["status"] for s in record["slides"]] == ["ok", "failed", "ok"]
    with open(out / "errors.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert rows == [{"slide": "b", "path": str(paths[1]), "error": summary.results[1].error,
                     "run": record["run"]}]
    assert not list((out / ".claims").iterdir())  # every claim given back

    paths[1].write_text("fixed")
    again = run_slides("copy", slide_items(paths), CopyJob(out), out)
    assert [r.status for r in again.results] == ["skipped", "ok", "skipped"]
    with open(out / "errors.csv", newline="") as f:
        assert list(csv.DictReader(f)) == []  # b's row went with its success


def test_errors_csv_keeps_other_runs_rows(tmp_path):
    paths = _inputs(tmp_path / "in", {"a": "bad", "b": "bad"})
    out = tmp_path / "out"
    run_slides("copy", slide_items(paths[:1]), CopyJob(out), out)
    run_slides("copy", slide_items(paths[1:]), CopyJob(out), out)  # another shard, say
    with open(out / "errors.csv", newline="") as f:
        assert [r["slide"] for r in csv.DictReader(f)] == ["a", "b"]


def test_a_slide_claimed_by_a_live_process_is_left_to_it(tmp_path):
    paths = _inputs(tmp_path / "in", {"a": "aaa", "b": "bbb"})
    out = tmp_path / "out"
    with Claims(out, "other-run") as other:
        other.acquire("a", str(paths[0]))  # a live holder: this very process
        summary = run_slides("copy", slide_items(paths), CopyJob(out), out)
    by_slide = {r.slide: r for r in summary.results}
    assert {s: r.status for s, r in by_slide.items()} == {"a": "claimed-elsewhere", "b": "ok"}
    assert by_slide["a"].note == f"claimed by {host()}:{os.getpid()} (run other-run)"


def test_another_input_under_the_same_name_is_refused_then_overwritten(tmp_path):
    first = _inputs(tmp_path / "a", {"s": "one"})
    second = _inputs(tmp_path / "b", {"s": "two"})
    out = tmp_path / "out"
    run_slides("copy", slide_items(first), CopyJob(out), out)
    refused = run_slides("copy", slide_items(second), CopyJob(out), out)
    (result,) = refused.results
    assert result.status == "failed"
    assert result.error == (f"{out / 's.txt'} was made from {first[0]}, not {second[0]}: two "
                            "slides named 's'; rename one, or --overwrite to replace it")
    assert (out / "s.txt").read_text().endswith("one")
    forced = run_slides("copy", slide_items(second), CopyJob(out), out, overwrite=True)
    assert forced.ok == 1 and (out / "s.txt").read_text().endswith("two")


def test_a_changed_input_is_redone(tmp_path):
    paths = _inputs(tmp_path / "in", {"a": "aaa"})
    out = tmp_path / "out"
    run_slides("copy", slide_items(paths), CopyJob(out), out)
    stat = paths[0].stat()
    os.utime(paths[0], (stat.st_atime, stat.st_mtime + MTIME_TOLERANCE_S / 2))
    assert run_slides("copy", slide_items(paths), CopyJob(out), out).skipped == 1
    os.utime(paths[0], (stat.st_atime, stat.st_mtime + 1))
    assert run_slides("copy", slide_items(paths), CopyJob(out), out).ok == 1


def test_paths_are_resolved(tmp_path):
    (tmp_path / "a").mkdir()
    spelled = tmp_path / "a" / ".." / "a" / "s.svs"
    assert resolve(spelled) == tmp_path / "a" / "s.svs"
    os.symlink(tmp_path / "a", tmp_path / "link")
    assert resolve(tmp_path / "link" / "s.svs") == tmp_path / "a" / "s.svs"


def test_shards_split_by_size(tmp_path):
    items = [SlideItem(f"s{i}", Path(f"/s{i}"), size) for i, size in
             enumerate([50, 10, 40, 30, 20, 45, 5])]
    shares = split_by_size(items, 3)
    assert [[i.name for i in share] for share in shares] == [
        ["s0", "s1", "s6"], ["s5", "s4"], ["s2", "s3"]]
    assert [sum(i.size for i in share) for share in shares] == [65, 65, 70]
    assert split_by_size(items, 3) == shares  # the same in every process
    assert sorted(i.name for share in shares for i in share) == sorted(i.name for i in items)
    assert [i.name for i in interleave_from_ends(shares, 0)] == ["s4", "s3", "s5", "s2"]


def test_shard_and_rank_settings(monkeypatch):
    assert parse_shard("1/4") == (1, 4)
    for bad in ("4/4", "-1/2", "1", "a/b", "0/0"):
        with pytest.raises(ConfigError, match="--shard must be I/N"):
            parse_shard(bad)
    assert Ranks.from_env("2/3") == Ranks(2, 3, 0, "shard")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert Ranks.from_env() == Ranks(1, 2, 1, "torchrun")
    with pytest.raises(ConfigError, match="under torchrun"):
        Ranks.from_env("0/2")


def test_a_shard_does_only_its_share(tmp_path):
    paths = _inputs(tmp_path / "in", {f"s{i}": "x" * (i + 1) for i in range(5)})
    out = tmp_path / "out"
    done = []
    for shard in ("0/2", "1/2"):
        job = CopyJob(out)
        summary = run_slides("copy", slide_items(paths), job, out, shard=shard)
        assert summary.rank == int(shard[0]) and summary.world_size == 2
        done.append(sorted(job.done))
    assert done == [["s0", "s1", "s4"], ["s2", "s3"]]
    assert len(list((out / "runs").glob("*.json"))) == 2


def test_temporary_files_of_dead_processes_are_removed(tmp_path):
    (tmp_path / "coords").mkdir()
    proc = subprocess.Popen([sys.executable, "-c",
                             "import sys; from pathlib import Path; "
                             "from lrmil.utils.atomic import temp_path_for; "
                             "p = temp_path_for(Path(sys.argv[1])); p.write_text('half'); "
                             "print(p)", str(tmp_path / "coords" / "s.h5")],
                            stdout=subprocess.PIPE, text=True)
    dead = Path(proc.communicate(timeout=60)[0].strip())
    mine = temp_path_for(tmp_path / "coords" / "t.h5")
    mine.write_text("being written")
    foreign = tmp_path / ".x.h5.tmp-elsewhere-7-9"
    foreign.write_text("another host's")
    assert dead.is_file()
    assert remove_stale_temps(tmp_path) == [dead]
    assert mine.is_file() and foreign.is_file()
    os.utime(foreign, (1, 1))  # a day old: its host's process is long gone
    assert remove_stale_temps(tmp_path) == [foreign]
