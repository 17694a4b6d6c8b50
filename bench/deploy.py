"""Deployment benchmark (issue 13): the final model against the best fold's student and the
ensemble of the fold students, on new slides, with and without the run's calibration.

    .venv/bin/python bench/deploy.py [--work DIR] [--new 40] [--new-seed 1]

Trains as `make demo` does (the README's demo cohort design: 48 slides of 2048^2 px, small foci
among many look-alikes, seed 0, configs/demo.yaml: 4 folds), then synthesises `--new` slides of
the same design from another seed (a --work holding a finished `make demo DEMO_DIR=<work>` run
is used as it is) and infers them (torch engine, CPU) with each model twice: as
exported (temperature applied) and with T = 1. Writes bench/results/deploy.md (and .json):
AUC, accuracy and balanced accuracy of the calls (the run's threshold for the calibrated
models, argmax at T = 1) and ECE (15 bins) before and after calibration. Each step resumes from
--work.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
ROOT = Path(__file__).resolve().parent.parent
COHORT = ["--size", "2048", "--foci", "8", "12", "--focus-radius", "25", "45", "--lymph", "8",
          "12", "--nests", "6", "10"]  # the Makefile's DEMO_COHORT


def lrmil(*args: str) -> None:
    command = [str(Path(sys.executable).parent / "lrmil"), *args]
    print("+", " ".join(command), flush=True)
    subprocess.run(command, check=True)


def train(work: Path) -> Path:
    if (work / "run" / "MODEL_CARD.md").exists():  # trained (by make demo DEMO_DIR=work)
        return work / "run"
    if not (work / "cohort" / "labels.csv").exists():
        lrmil("synth", str(work / "cohort"), "--slides", "48", *COHORT, "--seed", "0",
              "--workers", "2")
    lrmil("tile", str(work / "cohort" / "slides"), "--out", str(work / "tiled"),
          "--patch-size", "64", "--workers", "2")
    lrmil("embed", str(work / "tiled"), "--encoder", "lrmil-cnn", "--mag", "both", "--layers",
          "default", "--out", str(work / "features"))
    lrmil("distill", "--features", str(work / "features"), "--labels",
          str(work / "cohort" / "labels.csv"), "--tiled", str(work / "tiled"), "--out",
          str(work / "run"), "--config", str(ROOT / "configs" / "demo.yaml"))
    return work / "run"


def set_temperature(module, value: float) -> None:
    """Every calibration temperature inside a head graph (one per ensemble member)."""
    for name, buffer in module.named_buffers():
        if name.split(".")[-1] == "temperature":
            buffer.fill_(value)


def evaluate_model(run: Path, slides: Path, labels_csv: Path, out: Path, calibrated: bool,
                   **choice) -> dict:
    from lrmil.export.source import load_run
    from lrmil.infer import infer_slides
    from lrmil.infer.engines.torch_engine import TorchEngine
    from lrmil.infer.evaluate import evaluate, read_held_out_labels

    model = load_run(run, **choice)
    meta = model.meta
    if not calibrated:
        set_temperature(model.head, 1.0)
        meta.temperature, meta.threshold = 1.0, None
    engine = TorchEngine(model.encoder, model.head, meta, "cpu")
    start = time.perf_counter()
    # Small heatmaps: drawing them at 1024 px would dominate the timing here, not the model.
    infer_slides([slides], engine, out, workers=0, thumbnail_side=256, top_k=0)
    labels = read_held_out_labels(labels_csv, meta.class_names)
    result = evaluate(out, labels, meta.class_names)
    result["seconds"] = time.perf_counter() - start
    result["temperature"] = meta.temperature
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("bench_deploy_work"))
    parser.add_argument("--new", type=int, default=40, help="new slides to infer")
    parser.add_argument("--new-seed", type=int, default=1)
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    load_before = os.getloadavg()
    run = train(args.work)
    trained = time.perf_counter() - started
    new = args.work / f"new_seed{args.new_seed}"
    if not (new / "labels.csv").exists():
        lrmil("synth", str(new), "--slides", str(args.new), *COHORT, "--seed",
              str(args.new_seed), "--workers", "2")

    from lrmil.distill.calibration import read_calibration
    from lrmil.distill.layout import RunLayout
    from lrmil.distill.models import best_fold

    best = best_fold(run)
    choices = {"final": {}, f"best fold ({best})": {"fold": best}, "ensemble": {"ensemble": True}}
    results = {}
    for name, choice in choices.items():
        tag = name.split(" ")[0]
        results[name] = {
            state: evaluate_model(run, new / "slides", new / "labels.csv",
                                  args.work / f"infer_{tag}_{state}", state == "calibrated",
                                  **choice)
            for state in ("uncalibrated", "calibrated")}
    calibration = read_calibration(RunLayout(run))
    report = {"results": results, "best_fold": best, "temperature": calibration.temperature,
              "threshold": calibration.threshold, "oof": {"before": calibration.before,
                                                           "after": calibration.after},
              "new_slides": args.new, "new_seed": args.new_seed,
              "train_seconds": trained, "total_seconds": time.perf_counter() - started,
              "load_before": load_before, "load_after": os.getloadavg(),
              "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
              "metrics": json.loads((run / "metrics.json").read_text())["pooled"]["student"]}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "deploy.json").write_text(json.dumps(report, indent=2) + "\n")
    (RESULTS / "deploy.md").write_text(markdown(report, args))
    print((RESULTS / "deploy.md").read_text())


def markdown(report: dict, args: argparse.Namespace) -> str:
    oof = report["metrics"]
    lines = [
        "# Deployment: final model vs best fold vs ensemble (issue 13)", "",
        "Command: `nice -n 10 .venv/bin/python bench/deploy.py --new "
        f"{args.new} --new-seed {args.new_seed}`", "",
        "Training exactly as `make demo` (48 synthetic slides of the accuracy benchmark's "
        "cohort design, seed 0, configs/demo.yaml: 4 folds); then "
        f"{report['new_slides']} new slides of the same design from seed {report['new_seed']}, "
        "inferred from the slide files with the torch engine (CPU). Calibrated = the run's "
        f"temperature (T = {report['temperature']:.3f}, fitted on the students' out-of-fold "
        "predictions) and decision threshold "
        f"({report['threshold']:.3f} on P(positive)); uncalibrated = T = 1, argmax. AUC is "
        "unchanged by T (a monotone map) for single models; for the ensemble T acts before the "
        "average, so it can move a little.", "",
        "| model | AUC | accuracy | balanced accuracy | ECE before | ECE after | Brier before "
        "| Brier after |", "|---|---|---|---|---|---|---|---|"]
    for name, states in report["results"].items():
        before, after = states["uncalibrated"], states["calibrated"]
        lines.append(
            f"| {name} | {after['auc']:.3f} | {before['accuracy']:.3f} -> {after['accuracy']:.3f}"
            f" | {before['balanced_accuracy']:.3f} -> {after['balanced_accuracy']:.3f} | "
            f"{before['ece']:.3f} | {after['ece']:.3f} | {before['brier']:.3f} | "
            f"{after['brier']:.3f} |")
    lines += [
        "", "accuracy and balanced accuracy: uncalibrated (argmax) -> calibrated (threshold).",
        "", f"Cross-validation of the same run (pooled out-of-fold, student): AUC "
        f"{oof['auc']['value']:.3f} [{oof['auc']['low']:.3f}, {oof['auc']['high']:.3f}], "
        f"balanced accuracy {oof['balanced_accuracy']['value']:.3f}; out-of-fold ECE "
        f"{report['oof']['before']['ece']:.3f} -> {report['oof']['after']['ece']:.3f}.", "",
        f"Machine: {report['machine']}, shared with other jobs: load average "
        f"{report['load_before'][0]:.1f} at the start, {report['load_after'][0]:.1f} at the end "
        "(nice 10); "
        + (f"training took {report['train_seconds'] / 60:.1f} min, " if
           report["train_seconds"] > 60 else "trained earlier by `make demo DEMO_DIR=<work>`, ")
        + f"this script {report['total_seconds'] / 60:.1f} min. {report['new_slides']} slides "
        "are few: a difference of one or two slides is noise."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
