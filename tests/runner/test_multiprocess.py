"""Several processes on one output folder: torchrun ranks give the outputs of one process,
concurrent runs do each slide once, a killed rank fails the run naming it and a re-run does only
what is missing. Each test starts several Python processes that import torch: slow."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import h5py
import numpy as np
import pytest
from runner_helpers import lrmil_command, marked_env, torchrun_command, wait_for

pytestmark = pytest.mark.slow

EMBED = ("--encoder", "lrmil-cnn", "--mag", "both", "--batch-size", "32", "--device", "cpu")


@pytest.fixture(scope="module")
def tiled(tmp_path_factory) -> Path:
    """Six small synthetic slides tiled at 64 px."""
    from lrmil.synth import make_cohort
    from lrmil.tiling import TilingConfig, tile_slides

    root = tmp_path_factory.mktemp("multiprocess")
    make_cohort(root / "cohort", n_slides=6, seed=3, width=1024, height=1024)
    tile_slides([root / "cohort" / "slides"], root / "tiled", TilingConfig(patch_size=64))
    return root / "tiled"


def _names(tiled: Path) -> list[str]:
    return sorted(p.stem for p in (tiled / "coords").glob("*.h5"))


def _records(out: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((out / "runs").glob("*.json"))]


def _done_by(records: list[dict]) -> dict[str, list[int]]:
    """slide -> the ranks (or processes) that did it, over the given run records."""
    done: dict[str, list[int]] = {}
    for i, record in enumerate(records):
        for slide in record["slides"]:
            if slide["status"] == "ok":
                done.setdefault(slide["slide"], []).append(i)
    return done


def _features(out: Path) -> dict[str, np.ndarray]:
    arrays = {}
    for path in sorted(out.glob("*/*.h5")):
        with h5py.File(path) as f:
            for key in ("features", "coords", "parent", "child"):
                if key in f:
                    arrays[f"{path.parent.name}/{path.stem}/{key}"] = f[key][()]
    return arrays


def _run(command: list[str], timeout: float = 600) -> subprocess.CompletedProcess:
    env, _ = marked_env()
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)


def test_torchrun_embed_equals_one_process(tiled, tmp_path):
    one = _run(lrmil_command("embed", tiled, "--out", tmp_path / "one", *EMBED))
    assert one.returncode == 0, one.stderr
    two = _run(torchrun_command(2, "embed", tiled, "--out", tmp_path / "two", *EMBED))
    assert two.returncode == 0, two.stderr
    a, b = _features(tmp_path / "one"), _features(tmp_path / "two")
    assert a.keys() == b.keys() and len(a) == 6 * 2 * 2 + 6 * 2  # lr: 2 arrays, hr: 4
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    records = _records(tmp_path / "two")
    assert sorted(r["rank"] for r in records) == [0, 1]
    assert len({r["group"] for r in records}) == 1 and all(r["world_size"] == 2 for r in records)
    done = _done_by(records)
    assert sorted(done) == _names(tiled) and all(len(v) == 1 for v in done.values())
    assert "2 ranks" in two.stderr  # rank 0's summary covers both


def test_two_processes_started_together_do_every_slide_once(tiled, tmp_path):
    out = tmp_path / "feat"
    env, _ = marked_env()
    procs = [subprocess.Popen(lrmil_command("embed", tiled, "--out", out, *EMBED), env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    errors = [p.communicate(timeout=600)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errors
    records = _records(out)
    assert len(records) == 2 and all(r["status"] == "finished" for r in records)
    done = _done_by(records)
    assert sorted(done) == _names(tiled)
    assert all(len(v) == 1 for v in done.values()), done  # exactly once
    statuses = {s["status"] for r in records for s in r["slides"]}
    assert statuses <= {"ok", "claimed-elsewhere", "skipped"}
    assert not list((out / ".claims").iterdir())


def test_a_killed_rank_fails_the_run_naming_it_and_a_rerun_does_the_rest(tiled, tmp_path):
    out = tmp_path / "feat"
    env, _ = marked_env()
    run = subprocess.Popen(torchrun_command(2, "embed", tiled, "--out", out, *EMBED), env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        def rank1_claim() -> int | None:
            ranks = {r["rank"]: r["process"]["pid"] for r in _records(out)} if (
                out / "runs").is_dir() else {}
            for claim in (out / ".claims").glob("*") if 1 in ranks else ():
                try:
                    if json.loads(claim.read_text())["pid"] == ranks[1]:
                        return ranks[1]
                except (OSError, ValueError, KeyError):
                    continue
            return None

        victim = wait_for(rank1_claim, 300, "rank 1 to claim a slide")
        os.kill(victim, signal.SIGKILL)
        output = run.communicate(timeout=300)[0]
    finally:
        if run.poll() is None:
            run.kill()
    assert run.returncode != 0
    assert "rank 1" in output or "rank: 1" in output, output[-3000:]

    complete = {n for n in _names(tiled)
                if (out / "lr" / f"{n}.h5").is_file() and (out / "hr" / f"{n}.h5").is_file()}
    assert complete != set(_names(tiled))  # the killed rank's slide was not finished
    before = {p.name for p in (out / "runs").glob("*.json")}
    rerun = _run(lrmil_command("embed", tiled, "--out", out, *EMBED))
    assert rerun.returncode == 0, rerun.stderr
    (record,) = [json.loads(p.read_text()) for p in (out / "runs").glob("*.json")
                 if p.name not in before]
    by_status = {s["slide"]: s["status"] for s in record["slides"]}
    assert {n for n, s in by_status.items() if s == "ok"} == set(_names(tiled)) - complete
    assert {n for n, s in by_status.items() if s == "skipped"} == complete
    assert not list((out / ".claims").iterdir())


def _tiny_exported_run(root: Path, monkeypatch, tiny_lr_model) -> Path:
    """A run folder whose student is the tiny model, exported to ONNX (load_student patched
    here; the infer processes only read the export)."""
    from lrmil.export import export_run
    from lrmil.infer.testing import make_tiny_run

    run = make_tiny_run(root, monkeypatch, tiny_lr_model)
    export_run(run)
    return run


def test_torchrun_infer_equals_one_process(tmp_path, monkeypatch, tiny_lr_model, tiled):
    """The tiny model exported to ONNX, then `lrmil infer` on the cohort's slides."""
    import csv

    run = _tiny_exported_run(tmp_path, monkeypatch, tiny_lr_model)
    slides = tiled.parent / "cohort" / "slides"
    args = [slides, "--model", run, "--engine", "onnx", "--workers", "0"]
    one = _run(lrmil_command("infer", *args, "--out", tmp_path / "one"))
    assert one.returncode == 0, one.stderr
    two = _run(torchrun_command(2, "infer", *args, "--out", tmp_path / "two"))
    assert two.returncode == 0, two.stderr

    def rows(out: Path) -> list[dict]:
        with open(out / "predictions.csv", newline="") as f:
            return [{k: v for k, v in row.items() if k != "seconds"} for row in csv.DictReader(f)]

    assert rows(tmp_path / "one") == rows(tmp_path / "two") and len(rows(tmp_path / "one")) == 6
    for path in (tmp_path / "one" / "attention").glob("*.h5"):
        with h5py.File(path) as a, h5py.File(tmp_path / "two" / "attention" / path.name) as b:
            np.testing.assert_array_equal(a["attention"][()], b["attention"][()])
    done = _done_by(_records(tmp_path / "two"))
    assert len(done) == 6 and all(len(v) == 1 for v in done.values())
