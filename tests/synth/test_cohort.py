"""make_cohort / plan_cohort: files, labels, patients, determinism."""

from __future__ import annotations

import csv
import json

import openslide
import pytest

from lrmil.errors import ConfigError
from lrmil.synth import GENERATOR_VERSION, plan_cohort


def test_cohort_files_and_labels(synth_cohort):
    rows = list(csv.DictReader((synth_cohort / "labels.csv").read_text().splitlines()))
    assert [r["slide"] for r in rows] == [f"slide_{i:04d}" for i in range(6)]
    assert {r["label"] for r in rows} <= {"negative", "positive"}
    for row in rows:
        with openslide.OpenSlide(synth_cohort / "slides" / f"{row['slide']}.svs") as slide:
            assert slide.dimensions == (1024, 1024)
    record = json.loads((synth_cohort / "cohort.json").read_text())
    assert record["generator_version"] == GENERATOR_VERSION
    assert record["seed"] == 0 and record["n_slides"] == 6
    assert [s["name"] for s in record["slides"]] == [r["slide"] for r in rows]
    assert not list(synth_cohort.rglob(".*partial"))


def test_patients_share_labels_and_some_have_two_slides():
    specs = plan_cohort(200, seed=5, positive_fraction=0.3)
    by_patient: dict[str, set[str]] = {}
    for spec in specs:
        by_patient.setdefault(spec.patient, set()).add(spec.label)
    assert all(len(labels) == 1 for labels in by_patient.values())
    counts = [sum(s.patient == p for s in specs) for p in by_patient]
    assert set(counts) == {1, 2}
    positive_patients = sum(labels == {"positive"} for labels in by_patient.values())
    assert positive_patients == round(0.3 * len(by_patient))
    assert len({s.seed for s in specs}) == 200


def test_plan_is_deterministic_and_seed_dependent():
    assert plan_cohort(20, seed=1) == plan_cohort(20, seed=1)
    assert plan_cohort(20, seed=1) != plan_cohort(20, seed=2)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"n_slides": 0}, "--slides"), ({"n_slides": 3, "positive_fraction": 1.5}, "fraction")],
)
def test_bad_plans_are_refused(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        plan_cohort(seed=0, **kwargs)


def test_parallel_workers_write_the_same_files(tmp_path):
    from lrmil.synth import make_cohort

    done: list[str] = []
    make_cohort(tmp_path / "serial", 3, seed=9, width=512, height=512)
    make_cohort(
        tmp_path / "parallel", 3, seed=9, width=512, height=512, workers=2, progress=done.append
    )
    assert sorted(done) == ["slide_0000", "slide_0001", "slide_0002"]
    for name in ("labels.csv", "cohort.json", *(f"slides/slide_000{i}.svs" for i in range(3))):
        assert (tmp_path / "serial" / name).read_bytes() == (
            tmp_path / "parallel" / name
        ).read_bytes()


def test_a_single_slide_gets_the_workers_as_threads(tmp_path, monkeypatch):
    from lrmil.synth import cohort, make_cohort

    threads: list[int] = []
    write_slide = cohort.write_slide

    def spy(*args, **kwargs):
        threads.append(kwargs["threads"])
        return write_slide(*args, **kwargs)

    monkeypatch.setattr(cohort, "write_slide", spy)
    make_cohort(tmp_path / "one", 1, seed=9, width=768, height=512, workers=2)
    make_cohort(tmp_path / "two", 1, seed=9, width=768, height=512)
    assert threads == [2, 1]
    slide = "slides/slide_0000.svs"
    assert (tmp_path / "one" / slide).read_bytes() == (tmp_path / "two" / slide).read_bytes()
