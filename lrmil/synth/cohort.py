"""A synthetic cohort: slides, labels.csv (slide, patient, label) and cohort.json."""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from lrmil.errors import ConfigError
from lrmil.runner import worker_pool
from lrmil.synth.scene import SynthConfig
from lrmil.synth.slide import write_slide
from lrmil.utils.atomic import atomic_write_text, remove_stale_temps

GENERATOR_VERSION = "3"  # bump when the same seed starts producing different pixels
TWO_SLIDE_PATIENTS = 0.25  # fraction of patients with two slides (patient-level splits matter)


@dataclass(frozen=True)
class SlideSpec:
    name: str
    patient: str
    label: str
    seed: int


def plan_cohort(n_slides: int, seed: int, positive_fraction: float = 0.5) -> list[SlideSpec]:
    """Names, patients, labels and per-slide seeds, all from `seed`. Labels belong to patients
    (both slides of a patient share it); round(positive_fraction * patients) are positive."""
    if n_slides < 1:
        raise ConfigError(f"--slides must be >= 1, got {n_slides}")
    if not 0 <= positive_fraction <= 1:
        raise ConfigError(f"--positive-fraction must be in [0, 1], got {positive_fraction}")
    rng = np.random.default_rng(seed)
    sizes: list[int] = []
    while sum(sizes) < n_slides:
        two = n_slides - sum(sizes) >= 2 and rng.random() < TWO_SLIDE_PATIENTS
        sizes.append(2 if two else 1)
    n_positive = int(round(positive_fraction * len(sizes)))
    positive = np.zeros(len(sizes), bool)
    positive[rng.permutation(len(sizes))[:n_positive]] = True
    children = np.random.SeedSequence(seed).spawn(n_slides)
    slide_seeds = [int(child.generate_state(1)[0]) for child in children]
    specs = []
    for patient, (size, pos) in enumerate(zip(sizes, positive, strict=True)):
        for _ in range(size):
            i = len(specs)
            specs.append(
                SlideSpec(
                    f"slide_{i:04d}",
                    f"patient_{patient:04d}",
                    "positive" if pos else "negative",
                    slide_seeds[i],
                )
            )
    return specs


def _write_one(args: tuple[Path, SlideSpec, int, int, float, SynthConfig, int]) -> str:
    path, spec, width, height, mpp, config, threads = args
    write_slide(
        path,
        width,
        height,
        seed=spec.seed,
        label=spec.label,
        mpp=mpp,
        config=config,
        threads=threads,
    )
    return spec.name


def make_cohort(
    out_dir: str | os.PathLike[str],
    n_slides: int,
    seed: int = 0,
    width: int = 4096,
    height: int = 4096,
    positive_fraction: float = 0.5,
    *,
    mpp: float = 0.5,
    config: SynthConfig | None = None,
    workers: int = 1,
    progress: Callable[[str], None] | None = None,
) -> list[SlideSpec]:
    """Write `OUT/slides/<name>.svs`, `OUT/labels.csv` and `OUT/cohort.json` (generator version,
    parameters, seed). Slides already present are rewritten (same seed, same file). `workers`
    processes render slides in parallel, and workers left over (fewer slides than workers)
    become threads within each slide; `progress(name)` is called as each slide completes."""
    config = config or SynthConfig()
    specs = plan_cohort(n_slides, seed, positive_fraction)
    out = Path(out_dir)
    slides = out / "slides"
    try:
        slides.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create output folder {slides}: {exc.strerror}") from None
    if not os.access(slides, os.W_OK):
        raise ConfigError(f"output folder {slides} is not writable")
    remove_stale_temps(out)  # half-written slides of a killed run
    threads = max(1, workers // max(1, len(specs)))  # the file bytes do not depend on it
    jobs = [(slides / f"{s.name}.svs", s, width, height, mpp, config, threads) for s in specs]
    if workers > 1 and len(jobs) > 1:
        with worker_pool(min(workers, len(jobs))) as pool:  # its workers die with us
            for name in pool.map(_write_one, jobs):
                if progress:
                    progress(name)
    else:
        for job in jobs:
            name = _write_one(job)
            if progress:
                progress(name)
    atomic_write_text(out / "labels.csv", _labels_csv(specs))
    record = {
        "generator": "lrmil.synth",
        "generator_version": GENERATOR_VERSION,
        "seed": seed,
        "n_slides": n_slides,
        "width": width,
        "height": height,
        "mpp": mpp,
        "positive_fraction": positive_fraction,
        "config": asdict(config),
        "slides": [asdict(s) for s in specs],
    }
    atomic_write_text(out / "cohort.json", json.dumps(record, indent=2) + "\n")
    return specs


def _labels_csv(specs: list[SlideSpec]) -> str:
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(["slide", "patient", "label"])
    writer.writerows([s.name, s.patient, s.label] for s in specs)
    return text.getvalue()

