"""Helpers for the multi-process tests: the installed commands, and processes found by an
environment marker in /proc (no psutil)."""

from __future__ import annotations

import os
import sys
import time
import uuid
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent


def lrmil_command(*args: object) -> list[str]:
    return [str(BIN / "lrmil"), *map(str, args)]


def torchrun_command(n: int, *args: object) -> list[str]:
    return [str(BIN / "torchrun"), "--standalone", f"--nproc-per-node={n}", "--no-python",
            str(BIN / "lrmil"), *map(str, args)]


def marked_env(**extra: str) -> tuple[dict[str, str], str]:
    """An environment for a child process whose descendants can be found again."""
    mark = uuid.uuid4().hex
    env = {**os.environ, "LRMIL_TEST_MARK": mark, "OMP_NUM_THREADS": "1", **extra}
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        env.pop(name, None)
    return env, mark


def marked_processes(mark: str) -> list[int]:
    """Pids of the live processes whose environment holds the marker (zombies excluded)."""
    needle = f"LRMIL_TEST_MARK={mark}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if (entry / "stat").read_bytes().rsplit(b")", 1)[1].split()[0] == b"Z":
                continue
            if needle in (entry / "environ").read_bytes().split(b"\0"):
                found.append(int(entry.name))
        except (OSError, IndexError):
            continue
    return found


def wait_for(condition, timeout: float, what: str):
    """Poll `condition()` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.02)
