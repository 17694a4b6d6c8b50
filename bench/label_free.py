"""Label-free stage 1 (issue 16): does stage 1 on unlabelled slides help the student?

    .venv/bin/python bench/label_free.py [--work DIR] [--fractions 0.25 0.5] [--seeds 0 1]

On the accuracy benchmark's cohort (bench/accuracy.py `prepare`: synth -> tile -> embed once,
reused by every configuration), a share of the slides keeps its label (stratified by class, the
same slides for every seed) and the rest are listed with an empty label. Per labelled share and
seed, `encoder` mode runs with stage 1 on (a) the fold's labelled training slides
(`stage1.slides=train`) and (b) every slide outside the fold's test set (`all`), each with
`stage1.objective=mse` and `vicreg` (and, on request, `stage1.weights=uniform`: a config
`all:mse:uniform`). The teacher and the LR baseline depend on none of these
settings (same labelled slides, splits and seeds), so each is trained once per share and seed
and its files are copied into the other runs' folders, which then resume past them. Writes
bench/results/label_free.md (and .json) after every run; the md's hand-written verdict (from
its `## What it says` heading on) is kept.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
import accuracy  # noqa: E402  (the cohort's preparation)

RESULTS = Path(__file__).parent / "results"
CONFIGS = [("train", "mse", "teacher"), ("all", "mse", "teacher"),
           ("train", "vicreg", "teacher"), ("all", "vicreg", "teacher")]
VERDICT = "## What it says"
SHARED = ("teacher.safetensors", "teacher_outputs.h5", "pred_teacher.csv",
          "baseline.safetensors", "pred_baseline.csv")


def partly_labelled(labels: Path, share: float, out: Path) -> Path:
    """`labels` with all but `share` of each class's slides unlabelled (empty label)."""
    with labels.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    rng = np.random.default_rng(0)
    keep = set()
    for label in sorted({r["label"] for r in rows}):
        names = sorted(r["slide"] for r in rows if r["label"] == label)
        chosen = rng.permutation(len(names))[:int(round(share * len(names)))]
        keep |= {names[i] for i in chosen}
    with out.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows({**r, "label": r["label"] if r["slide"] in keep else ""} for r in rows)
    return out


def distill(work: Path, features: Path, labels: Path, name: str, seed: int, slides: str,
            objective: str, weights: str, donor: Path | None, overrides: list[str]) -> dict:
    from lrmil.distill import load_config, run

    out = work / name
    cfg = load_config(overrides=["stage1.mode=encoder", f"seed={seed}", "stage1.read_workers=0",
                                 f"stage1.slides={slides}", f"stage1.objective={objective}",
                                 f"stage1.weights={weights}", *overrides],
                      features=str(features), labels=str(labels), out=str(out))
    if donor is not None and not (out / "config.json").exists():
        for fold in sorted(donor.glob("fold_*")):
            (out / fold.name).mkdir(parents=True, exist_ok=True)
            for file in SHARED:
                shutil.copy(fold / file, out / fold.name / file)
        shutil.copy(donor / "splits.csv", out / "splits.csv")
    start = time.perf_counter()
    report = run(cfg)
    spent = out / "bench_seconds.txt"  # a resumed run adds to its earlier invocations' time
    before = float(spent.read_text()) if spent.exists() else 0.0
    report["seconds"] = before + time.perf_counter() - start
    spent.write_text(f"{report['seconds']:.1f}\n")
    return report


def summarise(results: dict, args, n_slides: int, dropped: list[str]) -> str:
    lines = ["# Label-free stage 1 (More From Less) on the synthetic cohort", "",
             f"Machine: {platform.machine()}, {os.cpu_count()} cores, CPU only, shared with "
             f"other jobs (load average at the last run's end: {os.getloadavg()[0]:.1f}): the "
             "minutes are wall time under that load. "
             f"Cohort: bench/accuracy.py's ({n_slides} slides of {args.size}^2 px, "
             f"{len(dropped)} without tissue left out), embedded once with lrmil-cnn; "
             "`stage1.mode=encoder`, every other setting the default; 5 patient-level folds "
             "over the labelled slides.", "",
             "Command (the full design; finished runs are kept and reused, so invocations "
             "with `--fractions`, `--seeds` or `--configs` fill the table in parts): "
             f"`.venv/bin/python bench/label_free.py --work {args.work} --slides "
             f"{args.slides} -- {' '.join(args.overrides)}`; the uniform-weights rows add "
             "`--configs train:mse:uniform all:mse:uniform`.", "",
             "| labelled | seed | test slides / fold | teacher | baseline | stage 1 slides | "
             "objective | HR weights | stage-1 slides / fold (labelled + unlabelled) | "
             "student AUC | recovered | minutes |", "|---" * 12 + "|"]
    # The design's configurations, then any others: per weights and objective, train first.
    configs = list(dict.fromkeys([*CONFIGS, *sorted(
        (key[2:] for key in results), key=lambda c: (c[2], c[1], c[0] != "train"))]))
    for key, report in sorted(results.items(), key=lambda item: (
            -item[0][0], item[0][1], configs.index(item[0][2:]))):
        share, seed, slides, objective, weights = key
        s = report["summary"]
        auc = {m: s[m]["auc"]["mean"] for m in report["models"]}
        per_fold = report["stage1"]["per_fold"].values()
        seen = np.mean([n["labelled"] for n in per_fold]), np.mean([n["unlabelled"]
                                                                    for n in per_fold])
        lines.append(
            f"| {share:.0%} | {seed} | {report['test_slides']:.0f} | {auc['teacher']:.3f} | "
            f"{auc['baseline']:.3f} | {slides} | {objective} | {weights} | "
            f"{seen[0]:.0f} + {seen[1]:.0f} | "
            f"{auc['student']:.3f} | {s['student']['gap_recovered_of_means']['mean']:.2f} | "
            f"{report['seconds'] / 60:.1f} |")
    lines += ["", "Mean over the seeds run, per labelled share (gap recovered of the mean "
              "AUCs):", "", "| labelled | stage 1 slides | objective | HR weights | seeds | "
              "teacher | baseline | student | recovered |", "|---" * 9 + "|"]
    for share in sorted({key[0] for key in results}, reverse=True):
        for config in configs:
            runs = [r for key, r in results.items() if key[0] == share and key[2:] == config]
            if not runs:
                continue
            slides, objective, weights = config
            mean = {m: np.mean([r["summary"][m]["auc"]["mean"] for r in runs])
                    for m in ("teacher", "baseline", "student")}
            gap = mean["teacher"] - mean["baseline"]
            rec = (mean["student"] - mean["baseline"]) / gap if gap > 0 else float("nan")
            lines.append(f"| {share:.0%} | {slides} | {objective} | {weights} | {len(runs)} | "
                         f"{mean['teacher']:.3f} | {mean['baseline']:.3f} | "
                         f"{mean['student']:.3f} | {rec:.2f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/lrmil-label-free"))
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.25, 0.5])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--configs", nargs="+", default=[":".join(c) for c in CONFIGS],
                        help="stage1.slides:stage1.objective[:stage1.weights], in the order "
                             "they run (weights default: teacher)")
    parser.add_argument("--slides", type=int, default=100)
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("overrides", nargs="*", help="distill settings, e.g. stage1.epochs=2")
    args = parser.parse_args()
    prep = argparse.Namespace(slides=args.slides, size=args.size, patch_size=64, foci=[8, 12],
                              radius=[25.0, 45.0], lymph=[8, 12], nests=[6, 10],
                              workers=args.workers)
    args.work.mkdir(parents=True, exist_ok=True)
    features, labels, dropped = accuracy.prepare(args.work, prep, "float32")
    configs = [(*c.split(":"), "teacher")[:3] for c in args.configs]
    # Runs of earlier invocations are kept (the latest of a configuration wins), so the table
    # can be filled by several invocations.
    saved = RESULTS / "label_free.json"
    results: dict = {}
    if saved.exists():
        for key, report in json.loads(saved.read_text()).items():
            share, seed, slides, objective, weights = key.split("/")
            results[(float(share), int(seed), slides, objective, weights)] = report
    for seed in args.seeds:
        for share in args.fractions:
            partial = partly_labelled(labels, share, args.work / f"labels_{share:g}.csv")
            # The teacher and baseline of an earlier run of this share and seed, if any.
            donor = next((run for run in sorted(args.work.glob(f"run_{share:g}_seed{seed}_*"))
                          if (run / "metrics.json").exists()), None)
            for slides, objective, weights in configs:
                name = f"run_{share:g}_seed{seed}_{slides}_{objective}" + (
                    "" if weights == "teacher" else f"_{weights}")
                report = distill(args.work, features, partial, name, seed, slides, objective,
                                 weights, donor, args.overrides)
                donor = donor or args.work / name
                folds = [len(f) for f in _test_sets(args.work / name)]
                report["test_slides"] = float(np.mean(folds))
                results[(share, seed, slides, objective, weights)] = report
                print(write_results(results, args, dropped), flush=True)


def write_results(results: dict, args, dropped: list[str]) -> str:
    """label_free.json and label_free.md, keeping the md's hand-written verdict; the table."""
    RESULTS.mkdir(exist_ok=True)
    text = summarise(results, args, args.slides, dropped)
    md = RESULTS / "label_free.md"
    old = md.read_text() if md.exists() else ""
    md.write_text(text + ("\n" + old[old.index(VERDICT):] if VERDICT in old else ""))
    (RESULTS / "label_free.json").write_text(json.dumps(
        {"/".join(map(str, k)): {key: r[key] for key in (
            "summary", "per_fold", "stage1", "seconds", "models", "test_slides")}
         for k, r in results.items()}, indent=1))
    return text


def _test_sets(run: Path) -> list[list[str]]:
    from lrmil.distill.splits import read_splits

    return [fold.test for fold in read_splits(run / "splits.csv")]


if __name__ == "__main__":
    main()
