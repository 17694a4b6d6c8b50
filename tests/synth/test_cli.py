"""`lrmil synth` through the Typer app."""

from __future__ import annotations

import csv

import pytest
from lrmil.cli.main import app
from typer.testing import CliRunner


def test_synth_writes_a_cohort(tmp_path):
    result = CliRunner().invoke(
        app, ["synth", str(tmp_path), "--slides", "3", "--seed", "4", "--size", "512x384"]
    )
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader((tmp_path / "labels.csv").read_text().splitlines()))
    assert len(rows) == 3
    assert sorted(p.name for p in (tmp_path / "slides").iterdir()) == [
        f"slide_000{i}.svs" for i in range(3)
    ]
    assert "3 slides" in result.output


def test_cohort_options_reach_the_generator(tmp_path):
    import json

    result = CliRunner().invoke(app, [
        "synth", str(tmp_path), "--slides", "1", "--size", "512", "--foci", "5", "6",
        "--focus-radius", "20", "30", "--lymph", "7", "8", "--nests", "0", "1"])
    assert result.exit_code == 0, result.output
    config = json.loads((tmp_path / "cohort.json").read_text())["config"]
    assert config["foci"] == [5, 6] and config["lymph_clusters"] == [7, 8]
    assert config["focus_radius"] == config["cluster_radius"] == [20.0, 30.0]
    assert config["nests"] == [0, 1]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--size", "big"], "--size must be WxH"),
        (["--size", "100x100"], "at least 256"),
        (["--slides", "0"], "--slides must be >= 1"),
        (["--foci", "3", "1"], "--foci must be"),
        (["--focus-radius", "2", "10"], "--focus-radius must be MIN MAX with 4 <="),
        (["--lymph", "-1", "2"], "--lymph must be"),
        (["--nests", "5", "2"], "--nests must be"),
        (["--lr-cue", "2"], "--lr-cue must be"),
        (["--positive-fraction", "-0.1"], "--positive-fraction"),
    ],
)
def test_bad_options_give_one_clear_error(tmp_path, args, message):
    result = CliRunner().invoke(app, ["synth", str(tmp_path / "out"), "--size", "512", *args])
    assert result.exit_code == 1
    assert message in result.output
    assert "Traceback" not in result.output


def test_output_that_is_a_file_is_refused(tmp_path):
    (tmp_path / "out").write_text("not a folder")
    result = CliRunner().invoke(app, ["synth", str(tmp_path / "out"), "--size", "512"])
    assert result.exit_code == 1
    assert "cannot create output folder" in result.output and "out" in result.output
