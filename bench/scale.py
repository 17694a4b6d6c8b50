"""Scaling out on this machine: `lrmil embed`, `lrmil infer` and `lrmil distill` wall time with
one process vs `torchrun --nproc-per-node 2` (gloo, CPU), interleaved repeats, and the per-slide
/ per-fold costs that say what N GPUs would give.

    nice -n 10 .venv/bin/python bench/scale.py [--work DIR] [--repeats 3]

The cohort: `lrmil synth` slides tiled at 64 px (embed: lrmil-cnn, LR and HR); distill on a toy
features cohort (lrmil.distill.toy, 4 folds, stage 1 in adapter mode) so its cost is training,
not reading; infer (torch engine) reads larger synth slides (its model reads 256 px patches at
5x: up to 256 in a 16384 px slide at 20x) with a model distilled once from the toy cohort and
exported (not timed). Each measurement is a fresh process as a user would start it: one process
uses torch's default threads (every core), torchrun gives each rank one thread (its default when
OMP_NUM_THREADS is not set). Writes bench/results/scale.md (and .json) with the load average
before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
BIN = Path(sys.executable).parent
EMBED = ["--encoder", "lrmil-cnn", "--mag", "both", "--batch-size", "32", "--device", "cpu"]
DISTILL = ["folds=4", "stage1.mode=adapter", "stage1.epochs=4", "teacher.epochs=20",
           "student.epochs=20", "baseline.epochs=20", "device=cpu"]


def prepare(work: Path, slides: int, size: int, infer_slides: int, infer_size: int
            ) -> tuple[Path, Path]:
    from lrmil.distill.toy import write_toy_features
    from lrmil.synth import make_cohort
    from lrmil.tiling import TilingConfig, tile_slides

    if not (work / "tiled").is_dir():
        make_cohort(work / "cohort", n_slides=slides, seed=0, width=size, height=size)
        tile_slides([work / "cohort" / "slides"], work / "tiled", TilingConfig(patch_size=64))
    if not (work / "toy" / "labels.csv").exists():
        write_toy_features(work / "toy", n_slides=64, n_lr=200, dim=256, hr_dim=128,
                           hr_signal=3.0, lr_signal=0.5, encoder="lrmil-cnn", seed=0)
    if not (work / "infer" / "labels.csv").exists():
        make_cohort(work / "infer", n_slides=infer_slides, seed=1, width=infer_size,
                    height=infer_size)
    if not (work / "model" / "export").is_dir():  # the model infer runs, made once
        shutil.rmtree(work / "model", ignore_errors=True)
        subprocess.run(command("distill", 1, work / "tiled", work / "toy", work / "model"),
                       check=True, stdout=subprocess.DEVNULL)
        subprocess.run([str(BIN / "lrmil"), "export", str(work / "model"), "--format", "onnx"],
                       check=True, stdout=subprocess.DEVNULL)
    return work / "tiled", work / "toy"


def command(step: str, procs: int, tiled: Path, toy: Path, out: Path) -> list[str]:
    if step == "embed":
        args = ["embed", str(tiled), "--out", str(out), *EMBED]
    elif step == "infer":
        args = ["infer", str(tiled.parent / "infer" / "slides"), "--model",
                str(tiled.parent / "model"), "--engine", "torch", "--device", "cpu",
                "--out", str(out)]
    else:
        args = ["distill", "--features", str(toy), "--labels", str(toy / "labels.csv"),
                "--out", str(out), *DISTILL]
    if procs == 1:
        return [str(BIN / "lrmil"), *args]
    return [str(BIN / "torchrun"), "--standalone", f"--nproc-per-node={procs}", "--no-python",
            str(BIN / "lrmil"), *args]


def timed(cmd: list[str], out: Path) -> float:
    shutil.rmtree(out, ignore_errors=True)
    env = {k: v for k, v in os.environ.items()
           if k not in ("OMP_NUM_THREADS", "RANK", "WORLD_SIZE", "LOCAL_RANK")}
    start = time.perf_counter()
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return time.perf_counter() - start


def patches(tiled: Path) -> tuple[int, int]:
    """(LR patches, valid HR children) over the tiled cohort."""
    import h5py

    lr = hr = 0
    for path in (tiled / "coords").glob("*.h5"):
        with h5py.File(path) as f:
            lr += len(f["coords"])
            hr += int(f["hr/valid"][()].sum())
    return lr, hr


def load() -> str:
    return " / ".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/lrmil-scale"))
    parser.add_argument("--slides", type=int, default=8)
    parser.add_argument("--size", type=int, default=1536)
    parser.add_argument("--infer-slides", type=int, default=8)
    parser.add_argument("--infer-size", type=int, default=16384)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", nargs="+", default=["embed", "infer", "distill"])
    args = parser.parse_args()
    tiled, toy = prepare(args.work, args.slides, args.size, args.infer_slides,
                         args.infer_size)
    before = load()
    times: dict[str, dict[int, list[float]]] = {s: {1: [], 2: []} for s in args.steps}
    for _ in range(args.repeats):  # interleaved: a load spike hits both sides
        for step in args.steps:
            for procs in (1, 2):
                out = args.work / f"out-{step}-{procs}"
                times[step][procs].append(timed(command(step, procs, tiled, toy, out), out))
                print(step, procs, f"{times[step][procs][-1]:.1f} s", flush=True)
    after = load()
    lr, hr = patches(tiled)
    med = {s: {p: statistics.median(v) for p, v in by.items()} for s, by in times.items()}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "scale.json").write_text(json.dumps(
        {"times_s": times, "median_s": med, "load_before": before, "load_after": after,
         "slides": args.slides, "size": args.size, "lr_patches": lr, "hr_patches": hr,
         "distill": DISTILL}, indent=1) + "\n")
    lines = [f"| {s} | {min(v[1]):.1f} / {med[s][1]:.1f} | {min(v[2]):.1f} / {med[s][2]:.1f} "
             f"| {med[s][1] / med[s][2]:.2f}x |" for s, v in times.items()]
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores; load {before} -> {after}")
    print(f"{args.slides} slides, {lr} LR / {hr} HR patches")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
