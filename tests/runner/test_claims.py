"""Claims: one holder per slide; stale claims (dead process, or not refreshed on another host)
taken over with a note; a process only ever removes its own claim."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from lrmil.runner.claims import Busy, Claim, Claims
from lrmil.utils.processes import ProcessId, host, is_running, this_process


def _dead_process() -> ProcessId:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    me = this_process()
    return ProcessId(me.host, me.boot, proc.pid, 12345)


def _write_claim(claims: Claims, name: str, owner: ProcessId, run: str = "other") -> bytes:
    content = json.dumps({"slide": "/x.svs", "run": run, **owner.as_dict()}).encode()
    (claims.folder / name).write_bytes(content)
    return content


def test_one_holder_at_a_time(tmp_path):
    with Claims(tmp_path, "a") as a, Claims(tmp_path, "b") as b:
        first = a.acquire("s1", "/data/s1.svs")
        assert isinstance(first, Claim) and not first.note
        record = json.loads((tmp_path / ".claims" / "s1").read_text())
        assert (record["host"], record["pid"], record["run"]) == (host(), os.getpid(), "a")
        second = b.acquire("s1", "/data/s1.svs")
        assert isinstance(second, Busy) and f"{host()}:{os.getpid()} (run a)" in second.owner
        assert b.holder("s1") == second
        a.release(first)
        assert not (tmp_path / ".claims" / "s1").exists() and b.holder("s1") is None
        assert isinstance(b.acquire("s1", "/data/s1.svs"), Claim)


def test_a_dead_process_claim_is_taken_over_with_a_note(tmp_path):
    with Claims(tmp_path, "me") as claims:
        dead = _dead_process()
        assert not is_running(dead)
        _write_claim(claims, "s1", dead)
        claim = claims.acquire("s1", "/data/s1.svs")
        assert isinstance(claim, Claim)
        assert claim.note == f"took over the stale claim of {dead} (run other): its process is gone"
        assert json.loads(claim.path.read_text())["run"] == "me"


def test_another_host_claim_is_stale_only_once_not_refreshed(tmp_path):
    with Claims(tmp_path, "me", stale_after=600) as claims:
        remote = ProcessId("elsewhere", "boot", 42, 7)
        _write_claim(claims, "s1", remote)
        assert isinstance(claims.acquire("s1", "/x.svs"), Busy)  # fresh: its owner may live
        old = (claims.folder / "s1").stat().st_mtime - 601
        os.utime(claims.folder / "s1", (old, old))
        claim = claims.acquire("s1", "/x.svs")
        assert isinstance(claim, Claim) and "not refreshed for 60" in claim.note


def test_an_unreadable_claim_counts_as_held_until_stale(tmp_path):
    with Claims(tmp_path, "me", stale_after=600) as claims:
        (claims.folder / "s1").write_bytes(b"")  # its writer is between create and write
        assert isinstance(claims.acquire("s1", "/x.svs"), Busy)
        os.utime(claims.folder / "s1", (1, 1))
        assert isinstance(claims.acquire("s1", "/x.svs"), Claim)


def test_release_leaves_a_claim_that_took_ours_over(tmp_path):
    with Claims(tmp_path, "me") as claims:
        claim = claims.acquire("s1", "/x.svs")
        assert isinstance(claim, Claim)
        theirs = _write_claim(claims, "s1", ProcessId("elsewhere", "", 1, 1))
        claims.release(claim)
        assert claim.path.read_bytes() == theirs


def test_held_claims_are_given_back_when_the_process_stops_early(tmp_path):
    with pytest.raises(KeyboardInterrupt), Claims(tmp_path, "me") as claims:
        assert isinstance(claims.acquire("s1", "/x.svs"), Claim)
        raise KeyboardInterrupt
    assert not (tmp_path / ".claims" / "s1").exists()


def test_a_reused_pid_is_not_the_recorded_process():
    me = this_process()
    assert is_running(me)
    if me.start:  # Linux: the start time tells a reuse of the pid apart
        assert not is_running(ProcessId(me.host, me.boot, me.pid, me.start + 1))
    assert not is_running(ProcessId(me.host, "another boot", me.pid, me.start))
