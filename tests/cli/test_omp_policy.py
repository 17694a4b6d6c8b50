"""The CLI makes OpenMP threads sleep when idle and torch's allocator use transparent huge pages,
unless the user chose otherwise."""

import os
import subprocess
import sys


def run(env: dict[str, str], name: str = "OMP_WAIT_POLICY") -> str:
    code = f"import os, lrmil.cli.main; print(os.environ['{name}'])"
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          check=True).stdout.strip()


def test_passive_by_default_and_the_users_setting_wins():
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    assert run(env) == "PASSIVE"
    assert run({**env, "OMP_WAIT_POLICY": "ACTIVE"}) == "ACTIVE"


def test_huge_pages_by_default_and_the_users_setting_wins():
    env = {k: v for k, v in os.environ.items() if k != "THP_MEM_ALLOC_ENABLE"}
    assert run(env, "THP_MEM_ALLOC_ENABLE") == "1"
    assert run({**env, "THP_MEM_ALLOC_ENABLE": "0"}, "THP_MEM_ALLOC_ENABLE") == "0"
