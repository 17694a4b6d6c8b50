"""`lrmil distill` under torchrun: folds spread across ranks give the metrics and predictions of
one process; a killed rank fails the run naming it, and a re-run trains only what is missing."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
from pathlib import Path

import pytest
from runner_helpers import lrmil_command, marked_env, torchrun_command, wait_for

from lrmil.distill import load_config, run
from lrmil.distill.layout import RunLayout
from lrmil.distill.parallel import deal
from lrmil.distill.toy import TINY_OVERRIDES, write_toy_features

SETTINGS = [*TINY_OVERRIDES, "ablations=no_stage1", "device=cpu"]


@pytest.fixture(scope="module")
def toy_features(tmp_path_factory) -> Path:
    """18 slides, 2 classes, 3 folds (tests/distill's toy cohort, smaller)."""
    out = tmp_path_factory.mktemp("toy_features")
    write_toy_features(out, n_slides=18, n_lr=10, dim=256, hr_dim=16, hr_signal=4.0,
                       lr_signal=1.0, encoder="lrmil-cnn", seed=0)
    return out


@pytest.fixture(scope="module")
def one_process(toy_features, tmp_path_factory) -> Path:
    """The reference: the same settings in this process, on one thread as each rank below
    (marked_env: OMP_NUM_THREADS=1)."""
    import torch

    out = tmp_path_factory.mktemp("one") / "run"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run(load_config(overrides=SETTINGS, features=str(toy_features),
                        labels=str(toy_features / "labels.csv"), out=str(out)))
    finally:
        torch.set_num_threads(threads)
    return out


def _distill(toy_features: Path, out: Path) -> list[str]:
    return ["distill", "--features", toy_features, "--labels", toy_features / "labels.csv",
            "--out", out, *SETTINGS]


def _outputs(out: Path) -> dict[str, bytes]:
    """metrics.json and every fold's test predictions."""
    files = {"metrics.json": (out / "metrics.json").read_bytes()}
    for fold in RunLayout(out).folds():
        for path in sorted(fold.dir.glob("pred_*.csv")):
            files[f"{fold.dir.name}/{path.name}"] = path.read_bytes()
    return files


def _records(out: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((out / "runs").glob("*.json"))]


def test_folds_are_dealt_out_in_turn():
    assert deal([1, 2, 3, 4, 5], 2) == [[1, 3, 5], [2, 4]]
    assert deal([2], 3) == [[2], [], []]
    assert deal([], 2) == [[], []]


def test_one_process_leaves_a_run_record(one_process):
    (record,) = _records(one_process)
    assert record["command"] == "distill" and record["status"] == "finished"
    assert record["rank"] == 0 and record["world_size"] == 1
    assert record["settings"]["folds"] == 3 and "torch" in record["versions"]
    assert record["notes"] == ["folds 1, 2, 3 (1 torch thread)"]


def test_torchrun_folds_across_two_ranks_equal_one_process(toy_features, one_process, tmp_path):
    out = tmp_path / "two"
    env, _ = marked_env()
    done = subprocess.run(torchrun_command(2, *_distill(toy_features, out)), env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert _outputs(out) == _outputs(one_process)
    records = _records(out)
    assert sorted(r["rank"] for r in records) == [0, 1]
    assert all(r["status"] == "finished" and r["world_size"] == 2 for r in records)
    assert len({r["group"] for r in records}) == 1
    notes = {r["rank"]: r["notes"] for r in records}
    assert notes == {0: ["rank 0 of 2: folds 1, 3 (1 torch thread)"],
                     1: ["rank 1 of 2: folds 2 (1 torch thread)"]}
    assert "rank 1: fold 2: teacher" in done.stdout and "rank 0: fold 2" not in done.stdout
    assert done.stdout.count("3-fold test metrics") == 1  # rank 0 alone reports


@pytest.mark.slow
def test_a_killed_rank_fails_the_run_naming_it_and_a_rerun_trains_what_is_missing(
        toy_features, one_process, tmp_path):
    out = tmp_path / "killed"
    env, _ = marked_env()
    job = subprocess.Popen(torchrun_command(2, *_distill(toy_features, out)), env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        def rank1_training() -> int | None:
            """Rank 1's pid once it has started its fold."""
            if not (out / "fold_2").is_dir():
                return None
            pids = [r["process"]["pid"] for r in _records(out) if r["rank"] == 1]
            return pids[0] if pids else None

        os.kill(wait_for(rank1_training, 300, "rank 1 to start fold 2"), signal.SIGKILL)
        output = job.communicate(timeout=300)[0]
    finally:
        if job.poll() is None:
            job.kill()
    assert job.returncode != 0
    # Rank 0's message, or torchrun's when it stopped rank 0 first ("local_rank: 1").
    assert re.search(r"rank:? 1\b", output), output[-3000:]
    layout = RunLayout(out)
    assert not layout.metrics.exists()
    assert not (layout.fold(2).model("baseline")).exists()  # rank 1's fold is unfinished

    kept = {p: p.stat().st_mtime_ns for p in out.glob("fold_*/*") if not p.name.startswith(".")}
    rerun = subprocess.run(lrmil_command(*_distill(toy_features, out)), env=env,
                           capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert {p: p.stat().st_mtime_ns for p in kept} == kept  # nothing done twice
    assert _outputs(out) == _outputs(one_process)
    assert not [p for p in out.glob("fold_*/.*")], "temporary files left behind"
    last = max(_records(out), key=lambda r: r["started"])
    assert last["status"] == "finished" and last["world_size"] == 1
