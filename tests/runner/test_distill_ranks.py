"""`lrmil distill` across processes: folds spread across torchrun ranks, or across shards
(--shard i/n), give the metrics and predictions of one process; two ranks on one fold train its
stage 1 under DDP to the one-process weights; a killed rank fails the run naming it, and a
re-run trains only what is missing."""

from __future__ import annotations

import csv
import json
import math
import os
import re
import shutil
import signal
import subprocess
from pathlib import Path

import pytest
import torch
from runner_helpers import lrmil_command, marked_env, torchrun_command, wait_for

from lrmil.distill import load_config, run
from lrmil.distill.checkpoint import load_state
from lrmil.distill.layout import RunLayout
from lrmil.distill.parallel import REPORT_CLAIM, FoldRanks, deal
from lrmil.distill.stage1 import Replicas
from lrmil.distill.toy import TINY_OVERRIDES, write_toy_features
from lrmil.runner.claims import Claims
from lrmil.runner.distributed import teams

SETTINGS = [*TINY_OVERRIDES, "ablations=no_stage1", "device=cpu"]
# Stage 1 fine-tuning lrmil-cnn on the pixels of small synthetic slides.
ENCODER_SETTINGS = ["stage1.mode=encoder", "stage1.read_workers=0", "stage1.batch_patches=19",
                    "ablations=[]"]


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
    return _in_this_process(toy_features, tmp_path_factory.mktemp("one") / "run")


@pytest.fixture(scope="module")
def slide_features(tmp_path_factory) -> Path:
    """12 small synthetic slides (3-12 LR patches of 64 px each), embedded by lrmil-cnn with
    its layers, the labels beside the features."""
    from lrmil.embed import embed_slides
    from lrmil.synth import make_cohort
    from lrmil.tiling import TilingConfig, tile_slides

    root = tmp_path_factory.mktemp("slides")
    make_cohort(root / "cohort", n_slides=12, seed=3, width=1024, height=1024)
    tile_slides([root / "cohort" / "slides"], root / "tiled", TilingConfig(patch_size=64))
    embed_slides(root / "tiled", "lrmil-cnn", root / "features", mag="both",
                 layers=["default"], device="cpu")
    shutil.copy(root / "cohort" / "labels.csv", root / "features" / "labels.csv")
    return root / "features"


def _in_this_process(features: Path, out: Path, *extra: str) -> Path:
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run(load_config(overrides=[*SETTINGS, *extra], features=str(features),
                        labels=str(features / "labels.csv"), out=str(out)))
    finally:
        torch.set_num_threads(threads)
    return out


def _distill(features: Path, out: Path, *extra: str) -> list[str]:
    return ["distill", "--features", features, "--labels", features / "labels.csv",
            "--out", out, *SETTINGS, *extra]


def _outputs(out: Path) -> dict[str, bytes]:
    """metrics.json and every fold's test predictions."""
    files = {"metrics.json": (out / "metrics.json").read_bytes()}
    for fold in RunLayout(out).folds():
        for path in sorted(fold.dir.glob("pred_*.csv")):
            files[f"{fold.dir.name}/{path.name}"] = path.read_bytes()
    return files


def _records(out: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((out / "runs").glob("*.json"))]


def _wrote_report(records: list[dict]) -> list[int]:
    """The ranks or shards whose record says they wrote the report."""
    return [r["rank"] for r in records
            if "wrote the final model, the calibration and the report" in r["notes"]]


def test_folds_are_dealt_out_in_turn():
    assert deal([1, 2, 3, 4, 5], 2) == [[1, 3, 5], [2, 4]]
    assert deal([2], 3) == [[2], [], []]
    assert deal([], 2) == [[], []]


def test_ranks_outnumbering_the_folds_form_teams_of_consecutive_ranks():
    assert teams(2, 1) == [[0, 1]]
    assert teams(8, 3) == [[0, 1, 2], [3, 4, 5], [6, 7]]
    assert teams(5, 5) == [[0], [1], [2], [3], [4]]


def test_shares_of_a_batch_average_to_the_gradient_of_its_mean():
    """What DDP averages over 3 processes (uneven shares, one empty) equals one process's
    gradient of the global batch's mean loss."""
    w = torch.randn(4, requires_grad=True)
    x = torch.randn(2, 4)  # a last batch of 2 rows: the third process's share is empty
    torch.autograd.backward(((x @ w) ** 2).mean())
    whole, w.grad = w.grad.clone(), None
    shares = [Replicas(3, i) for i in range(3)]
    assert [len(r.share(torch.arange(2))) for r in shares] == [1, 1, 0]
    grads = []
    for replicas in shares:
        part = replicas.share(x)
        torch.autograd.backward(replicas.mean((part @ w) ** 2, len(x)))
        grads.append(w.grad)
        w.grad = None
    torch.testing.assert_close(torch.stack(grads).mean(0), whole)


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


def _training_rows(features: Path, out: Path, fold: int) -> int:
    """Stage-1 training rows of a fold: its training slides' LR patches with a valid child."""
    from lrmil.data import read_features

    with (out / "splits.csv").open(newline="") as fh:
        train = [row["slide"] for row in csv.DictReader(fh) if row[f"fold_{fold}"] == "train"]
    return sum(len(set(read_features(features / "hr" / f"{name}.h5").parent.tolist()))
               for name in train)


def _fold_2_on_two_ranks(features: Path, reference: Path, out: Path, mode: str,
                         *extra: str) -> None:
    """Folds 1 and 3 of `reference` complete, fold 2 missing: both ranks train its stage 1
    together, the owner (rank 0) everything else; as one process up to summation order."""
    shutil.copytree(reference, out, ignore=shutil.ignore_patterns("runs"))
    shutil.rmtree(out / "fold_2")
    env, _ = marked_env()
    done = subprocess.run(torchrun_command(2, *_distill(features, out, *extra)), env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    ours, theirs = (load_state(RunLayout(o).fold(2).stage1_model(mode))[0]
                    for o in (out, reference))
    diff = max((ours[k] - theirs[k]).abs().max() for k in theirs)
    change = _stage1_change(ours, mode)
    assert change > 1e-3
    # Summation order gives 1e-7 to 1e-6 (Adam's first steps amplify it); training on another
    # split of the batches, or without the all-reduce, moves the weights by about the change.
    assert diff < 1e-2 * change, f"max |DDP - one process| {diff:.2e}, change {change:.2e}"

    metrics, expected = (json.loads((o / "metrics.json").read_text()) for o in (out, reference))
    assert metrics.keys() == expected.keys()
    for fold in ("1", "3"):  # untouched folds, read again
        assert metrics["per_fold"][fold] == expected["per_fold"][fold]

    notes = {r["rank"]: r["notes"] for r in _records(out)}
    assert notes[0][0] == "rank 0 of 2: fold 2 with ranks 0, 1 (its stage 1 under DDP) " \
                          "(1 torch thread)"
    assert notes[1][0] == "rank 1 of 2: stage 1 of fold 2 under DDP with ranks 0, 1 " \
                          "(rank 0 owns the fold) (1 torch thread)"
    rows = {}
    for rank, lines in notes.items():
        (line,) = [n for n in lines if n.startswith("fold 2: stage 1 under DDP on ranks 0, 1")]
        rows[rank] = int(re.search(r"(\d+) training rows here", line)[1])
    cfg = load_config(overrides=[*SETTINGS, *extra])
    epochs, total = cfg.stage1.epochs, _training_rows(features, out, 2)
    assert sum(rows.values()) == epochs * total  # each row once per epoch, on one rank
    batches = epochs * math.ceil(total / cfg.stage1.batch_patches)
    assert abs(rows[0] - rows[1]) <= batches  # one row per global batch at most
    assert f"rank 1: fold 2: stage 1 ({mode})" in done.stdout
    assert "rank 0: fold 2: teacher" in done.stdout and "rank 1: fold 2: teacher" not in done.stdout
    assert _wrote_report(_records(out)) == [] and done.stdout.count("3-fold test metrics") == 1


def _stage1_change(trained: dict[str, torch.Tensor], mode: str) -> float:
    """How far training moved the stage-1 weights: the adapter's last layer starts at zero;
    the encoder starts from lrmil-cnn's built-in weights (seed 0)."""
    if mode == "adapter":
        return float(trained["mlp.2.weight"].abs().max())
    from lrmil.encoders import build

    start = build("lrmil-cnn", None, seed=0).model.state_dict()
    return max(float((trained[k] - start[k]).abs().max()) for k in trained
               if trained[k].is_floating_point())


def test_two_ranks_on_one_fold_train_its_adapter_under_ddp_as_one_process(
        toy_features, one_process, tmp_path):
    # Measured: max |DDP - one process| 1.5e-7, change 2.5e-3.
    _fold_2_on_two_ranks(toy_features, one_process, tmp_path / "team", "adapter")


def test_two_ranks_on_one_fold_fine_tune_its_encoder_under_ddp_as_one_process(
        slide_features, tmp_path):
    # Measured: max |DDP - one process| 1.2e-6, change 3.5e-3.
    reference = _in_this_process(slide_features, tmp_path / "one", *ENCODER_SETTINGS)
    # 39 rows in batches of 19: each epoch ends on a batch of one row, rank 1's share is empty.
    assert _training_rows(slide_features, reference, 2) % 19 == 1
    _fold_2_on_two_ranks(slide_features, reference, tmp_path / "team", "encoder",
                         *ENCODER_SETTINGS)


def test_shards_one_after_the_other_give_one_process_and_a_rerun_does_nothing(
        toy_features, one_process, tmp_path):
    out = tmp_path / "shards"
    env, _ = marked_env()
    runs = [subprocess.run(lrmil_command(*_distill(toy_features, out), "--shard", f"{i}/2"),
                           env=env, capture_output=True, text=True, timeout=600)
            for i in (0, 1)]
    assert [r.returncode for r in runs] == [0, 0], [r.stderr[-3000:] for r in runs]
    assert _outputs(out) == _outputs(one_process)
    assert "shard 0 of 2: fold 2 not complete: the shard that completes the last fold writes " \
           "the report" in " ".join(runs[0].stdout.split())  # as rich wraps it
    assert "3-fold test metrics" in runs[1].stdout and "3-fold test metrics" not in runs[0].stdout
    records = _records(out)
    assert {r["rank"]: r["notes"][0] for r in records} == {
        0: "shard 0 of 2: folds 1, 3 (1 torch thread)",
        1: "shard 1 of 2: folds 2 (1 torch thread)"}
    assert all(r["shard"] == f"{r['rank']}/2" for r in records)
    assert _wrote_report(records) == [1]

    # Every process writes config.json and splits.csv again (a resumable setting may change).
    kept = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file() and
            p.name not in ("config.json", "splits.csv") and not {"runs", ".claims"} & set(p.parts)}
    again = subprocess.run(lrmil_command(*_distill(toy_features, out), "--shard", "0/2"),
                           env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "the report is already written" in " ".join(again.stdout.split())
    assert {p: p.stat().st_mtime_ns for p in kept} == kept  # nothing trained or written again


def test_shards_at_once_give_one_process_with_the_report_written_once(
        toy_features, one_process, tmp_path):
    out = tmp_path / "shards"
    env, _ = marked_env()
    jobs = [subprocess.Popen(lrmil_command(*_distill(toy_features, out), "--shard", f"{i}/2"),
                             env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for i in (0, 1)]
    outputs = [job.communicate(timeout=600) for job in jobs]
    assert [job.returncode for job in jobs] == [0, 0], [err[-3000:] for _, err in outputs]
    assert _outputs(out) == _outputs(one_process)
    assert len(_wrote_report(_records(out))) == 1
    assert sum("3-fold test metrics" in stdout for stdout, _ in outputs) == 1
    assert not list((out / ".claims").iterdir())


def test_a_shard_leaves_the_report_to_the_one_holding_its_claim(tmp_path):
    """Both shards found every fold complete: the one that lost the claim writes nothing."""
    with Claims(tmp_path, "other-shard") as other:
        other.acquire(REPORT_CLAIM, str(tmp_path))
        ranks = FoldRanks(tmp_path, shard="0/2")
        with ranks:
            ranks.share([], [1, 2], {}, torch.device("cpu"))
            ranks.finished()
            with ranks.reporting(list, lambda: False) as elsewhere:
                assert elsewhere is not None and "the report is being written by" in elsewhere
    with ranks, ranks.reporting(list, lambda: False) as elsewhere:
        assert elsewhere is None  # released: this shard writes it
