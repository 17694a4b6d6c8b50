"""Every test here starts as a single process, whatever the environment says."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _single_process(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
