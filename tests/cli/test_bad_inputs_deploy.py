"""`lrmil export` and `lrmil infer` given bad inputs: one clear line (or one `failed:` line per
bad slide while the others are predicted), a non-zero exit, no traceback, nothing half-written."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from bad_input_helpers import (
    assert_one_failure,
    assert_one_line,
    assert_usage_error,
    disk_full,
    files_under,
    invoke,
    no_partial_files,
)
from PIL import Image

from lrmil.errors import EnvironmentMissingError
from lrmil.infer.engines.trt_engine import require_tensorrt
from lrmil.synth.slide import write_slide


def _has_tensorrt() -> bool:
    try:
        require_tensorrt()
    except EnvironmentMissingError:
        return False
    return True


def _write(path: Path, data: bytes | str) -> Path:
    path.write_bytes(data if isinstance(data, bytes) else data.encode())
    return path


def _config(run: Path, **changes) -> Path:
    config = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**config, **changes}))
    return run


def _no_student(run: Path) -> Path:
    (run / "fold_1" / "student.safetensors").unlink()
    return run


# Export: (case, make(tmp, run) -> (args after `export`, named in the line))
EXPORT = {
    "run folder missing": lambda tmp, run: ([tmp / "nope"], [tmp / "nope", "does not exist"]),
    "not a run folder": lambda tmp, run: ([tmp], [tmp, "config.json"]),
    "run folder is a file": lambda tmp, run: (
        [_write(tmp / "run.txt", "x")], [tmp / "run.txt", "is a file, not a folder"]),
    "run of another lrmil version": lambda tmp, run: (
        [_config(run, versions={"lrmil": "9.3.0"})], ["made by lrmil 9.3.0"]),
    "run without a trained student": lambda tmp, run: ([_no_student(run)],
                                                       ["no trained student"]),
    "config.json not JSON": lambda tmp, run: (
        [_write(run / "config.json", "{oops") and run], [run / "config.json"]),
    "out is an existing file": lambda tmp, run: (
        [run, "--out", _write(tmp / "out", "keep me")], [tmp / "out", "--out must be a folder"]),
    "fp16 for ONNX": lambda tmp, run: ([run, "--fp16"], ["--fp16 applies to --format trt"]),
    "an unknown input dtype": lambda tmp, run: ([run, "--input-dtype", "int8"],
                                                ["input dtype must be one of", "'int8'"]),
    "TensorRT batch profile upside down": lambda tmp, run: (
        [run, "--batch-opt", 300], ["--batch-opt 300 and --batch-max 256", "1 <= --batch-opt"]),
    "TensorRT bag profile of zero": lambda tmp, run: ([run, "--bag-max", 0],
                                                      ["--bag-opt 2048 and --bag-max 0"]),
    "a fold and the ensemble": lambda tmp, run: ([run, "--fold", 1, "--ensemble"],
                                                 ["give --fold K or --ensemble, not both"]),
}


@pytest.mark.parametrize("case", EXPORT)
def test_export_refused_before_writing(case, tmp_path, tiny_run):
    args, named = EXPORT[case](tmp_path, tiny_run)
    assert_one_line(invoke("export", *args), *named)
    assert not (tiny_run / "export").exists()
    if case == "out is an existing file":
        assert (tmp_path / "out").read_text() == "keep me"


def test_export_on_a_full_disk_is_one_line_and_leaves_no_partial_file(tiny_run, monkeypatch):
    disk_full(monkeypatch, "mil.onnx")
    assert_one_line(invoke("export", tiny_run), tiny_run / "export" / "mil.onnx",
                    "No space left on device")
    no_partial_files(tiny_run / "export")
    assert not (tiny_run / "export" / "mil.onnx").exists()


@pytest.mark.skipif(_has_tensorrt(), reason="TensorRT and a GPU are present")
def test_export_trt_without_tensorrt(tmp_path, tiny_run):
    assert_one_line(invoke("export", tiny_run, "--format", "trt"), "TensorRT")
    assert not (tiny_run / "export").exists()


@pytest.fixture(scope="module")
def good_slides(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("infer_good")
    for i, name in enumerate(("good_a", "good_b")):
        write_slide(root / f"{name}.svs", 768, 512, seed=i, label=("negative", "positive")[i])
    return root


@pytest.fixture
def slides(tmp_path, good_slides) -> Path:
    shutil.copytree(good_slides, tmp_path / "slides")
    return tmp_path / "slides"


def _infer(slides, run, out, *args: object):
    return invoke("infer", slides, "--model", run, "--out", out, "--workers", 0, *args)


# Infer: (case, make(tmp, run, slides) -> (extra args, named in the line))
INFER = {
    "out is an existing file": lambda tmp, run, s: (
        ["--out", _write(tmp / "taken", "keep me")], [tmp / "taken", "--out must be a folder"]),
    "device gpu": lambda tmp, run, s: (["--engine", "torch", "--device", "gpu"],
                                       ["--device must be auto, cpu, cuda or cuda:N"]),
    "no export for onnx": lambda tmp, run, s: ([], [run / "export", "does not exist: run "
                                                    f"`lrmil export {run}` first"]),
    "model folder missing": lambda tmp, run, s: (["--model", tmp / "nope"],
                                                 [tmp / "nope", "does not exist"]),
    "model folder is a file": lambda tmp, run, s: (
        ["--model", _write(tmp / "model.pt", "x")], [tmp / "model.pt", "is a file, not a folder"]),
    "mpp and mpp CSV": lambda tmp, run, s: (["--mpp", 0.5, "--mpp-csv", tmp / "m.csv"],
                                            ["either --mpp or --mpp-csv"]),
    "mpp CSV not UTF-8": lambda tmp, run, s: (
        ["--engine", "torch", "--mpp-csv", _write(tmp / "m.csv", b"slide,mpp\n\xe9,1\n")],
        [tmp / "m.csv", "not UTF-8"]),
    "mpp zero": lambda tmp, run, s: (["--engine", "torch", "--mpp", 0],
                                     ["--mpp", "mpp must be a positive"]),
    "slide list without a slide column": lambda tmp, run, s: (
        ["--engine", "torch"], [tmp / "list.csv", "slide"]),
    "shard out of range": lambda tmp, run, s: (["--engine", "torch", "--shard", "3/3"],
                                               ["--shard"]),
    "an empty folder": lambda tmp, run, s: (["--engine", "torch"],
                                            [tmp / "empty", "holds no slide files"]),
    "a fold the run lacks": lambda tmp, run, s: (["--fold", 9], ["has no student for fold 9"]),
    "export folder missing": lambda tmp, run, s: (
        ["--export-dir", tmp / "nope"], [tmp / "nope", "does not exist", "lrmil export"]),
    "labels CSV of other slides": lambda tmp, run, s: (
        ["--engine", "torch", "--labels", _write(tmp / "l.csv", "slide,label\nfoo,class1\n")],
        [tmp / "l.csv", "labels none of the 2 slide(s) given", "good_a", "foo"]),
    "labels CSV of other classes": lambda tmp, run, s: (
        ["--engine", "torch", "--labels", _write(tmp / "l.csv", "slide,label\ngood_a,tumour\n")],
        [tmp / "l.csv", "['tumour'] are not classes of the model"]),
    "labels CSV without a label": lambda tmp, run, s: (
        ["--engine", "torch", "--labels", _write(tmp / "l.csv", "slide,label\ngood_a,\n")],
        [tmp / "l.csv", "has no labelled slide"]),
}


@pytest.mark.parametrize("case", INFER)
def test_infer_refused_before_writing(case, tmp_path, tiny_run, slides):
    extra, named = INFER[case](tmp_path, tiny_run, slides)
    target = slides
    if case == "slide list without a slide column":
        target = _write(tmp_path / "list.csv", "path\ngood_a.svs\n")
    if case == "an empty folder":
        target = tmp_path / "empty"
        target.mkdir()
    out = tmp_path / "out"
    assert_one_line(_infer(target, tiny_run, out, *extra), *named)
    assert not out.is_dir() or files_under(out) == []
    if case == "out is an existing file":
        assert (tmp_path / "taken").read_text() == "keep me"


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_infer_cuda_without_cuda(tmp_path, tiny_run, slides):
    assert_one_line(_infer(slides, tiny_run, tmp_path / "out", "--engine", "torch", "--device",
                           "cuda"), "--device cuda", "no CUDA device")
    assert not (tmp_path / "out").exists()


@pytest.mark.skipif(_has_tensorrt(), reason="TensorRT and a GPU are present")
def test_infer_trt_without_tensorrt(tmp_path, tiny_run, slides):
    assert_one_line(_infer(slides, tiny_run, tmp_path / "out", "--engine", "trt"), "TensorRT",
                    "use --engine onnx")


def test_infer_with_an_export_of_other_weights(tmp_path, tiny_run, slides):
    assert invoke("export", tiny_run).exit_code == 0
    (tiny_run / "fold_1" / "student.safetensors").write_bytes(b"retrained")
    assert_one_line(_infer(slides, tiny_run, tmp_path / "out"),
                    "weights changed since this export")


@pytest.mark.parametrize("version, says", [
    (1, "sidecar version 1, an export from before calibration; re-run `lrmil export`"),
    (3, "sidecar version 3, this lrmil reads 2: re-run `lrmil export` with this lrmil"),
])
def test_infer_with_an_export_of_another_sidecar_version(tmp_path, tiny_run, slides, version,
                                                          says):
    assert invoke("export", tiny_run).exit_code == 0
    sidecar = tiny_run / "export" / "mil.onnx.json"
    sidecar.write_text(json.dumps({**json.loads(sidecar.read_text()),
                                   "sidecar_version": version}))
    assert_one_line(_infer(slides, tiny_run, tmp_path / "out"), sidecar, says)
    assert not (tmp_path / "out").exists()


def test_infer_labels_by_file_name_with_an_unlabelled_slide(tmp_path, tiny_run, slides):
    """A labels CSV naming slides by file name, one of them without a label (left out)."""
    labels = _write(tmp_path / "l.csv", "slide,label\ngood_a.svs,class1\ngood_b.svs,\n")
    result = _infer(slides, tiny_run, tmp_path / "out", "--engine", "torch", "--labels", labels)
    assert result.exit_code == 0, result.output
    evaluation = json.loads((tmp_path / "out" / "evaluation.json").read_text())
    assert evaluation["slides"] == 1 and evaluation["unlabelled"] == ["good_b"]
    assert "AUC n/a (the labelled slides hold a single class)" in " ".join(result.output.split())


def test_infer_on_a_full_disk_fails_that_slide(tmp_path, tiny_run, slides, monkeypatch):
    disk_full(monkeypatch, "good_b.h5")
    out = tmp_path / "out"
    result = _infer(slides, tiny_run, out, "--engine", "torch", "--device", "cpu")
    assert_one_failure(result, "good_b.h5", "No space left on device")
    predicted = (out / "predictions.csv").read_text()
    assert "good_a" in predicted and "good_b" not in predicted
    assert "good_b" in (out / "errors.csv").read_text()
    no_partial_files(out)


def _truncated(folder: Path) -> Path:
    data = (folder / "good_a.svs").read_bytes()
    return _write(folder / "bad.svs", data[: len(data) // 3])


def _empty(folder: Path) -> Path:
    return _write(folder / "bad.svs", b"")


def _not_a_slide(folder: Path) -> Path:
    return _write(folder / "bad.svs", "a text file\n")


def _no_resolution(folder: Path) -> Path:
    Image.new("RGB", (600, 400), (200, 120, 160)).save(folder / "bad.png")
    return folder / "bad.png"


PER_SLIDE = {
    "truncated slide": (_truncated, "looks truncated"),
    "empty slide file": (_empty, "the file is empty (0 bytes)"),
    "not a slide": (_not_a_slide, "not a slide format OpenSlide can read"),
    "no resolution": (_no_resolution, "--mpp"),
}


@pytest.mark.parametrize("case", PER_SLIDE)
def test_infer_one_bad_slide_the_others_are_predicted(case, tmp_path, tiny_run, slides):
    make, says = PER_SLIDE[case]
    bad = make(slides)
    out = tmp_path / "out"
    result = _infer(slides, tiny_run, out, "--engine", "torch", "--device", "cpu")
    assert result.exit_code == 1
    assert_one_failure(result, bad, says)
    predicted = (out / "predictions.csv").read_text()
    assert "good_a" in predicted and "good_b" in predicted and "bad" not in predicted
    assert "bad" in (out / "errors.csv").read_text()
    no_partial_files(out)


@pytest.mark.parametrize("args, command, named", [
    (["export", "run", "--format", "zip"], "export", ["--format", "'zip'", "'onnx', 'trt'"]),
    (["export"], "export", ["Missing argument"]),
    (["export", "run", "--fold", "one"], "export", ["--fold", "valid integer"]),
    (["infer", "s.svs", "--model", "run", "--out", "o", "--engine", "tensorflow"], "infer",
     ["--engine", "'tensorflow'"]),
    (["infer", "s.svs", "--out", "o", "--hr-mag", "20"], "infer", ["No such option: --hr-mag"]),
    (["infer", "--model", "run", "--out", "o"], "infer", ["Missing argument"]),
])
def test_a_usage_error_is_one_line_exit_2(args, command, named):
    assert_usage_error(invoke(*args), command, *named)
