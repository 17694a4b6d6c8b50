"""The CLI makes OpenMP threads sleep when idle unless the user chose otherwise."""

import os
import subprocess
import sys

CODE = "import os, lrmil.cli.main; print(os.environ['OMP_WAIT_POLICY'])"


def run(env: dict[str, str]) -> str:
    return subprocess.run([sys.executable, "-c", CODE], env=env, capture_output=True, text=True,
                          check=True).stdout.strip()


def test_passive_by_default_and_the_users_setting_wins():
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    assert run(env) == "PASSIVE"
    assert run({**env, "OMP_WAIT_POLICY": "ACTIVE"}) == "ACTIVE"
