"""`lrmil distill` given bad inputs: one clear line naming the setting or file, a non-zero exit,
no traceback, and nothing written (every input is checked before the run folder is made), so
that the corrected command on the same --out then runs."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from bad_input_helpers import (
    assert_one_error_after_work,
    assert_one_line,
    assert_usage_error,
    disk_full,
    files_under,
    invoke,
)

from lrmil.distill.toy import TINY_OVERRIDES, write_toy_features


@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> Path:
    """24 slides of 8 LR patches, 16-d features: FEAT/lr, FEAT/hr, FEAT/labels.csv."""
    out = tmp_path_factory.mktemp("distill_bad")
    write_toy_features(out, n_slides=24, n_lr=8, dim=16, hr_signal=4.0, lr_signal=1.0, seed=2)
    return out


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: threads only spin
    yield
    torch.set_num_threads(before)


def _distill(features: Path, labels: Path, out: Path, *extra: object):
    return invoke("distill", "--features", features, "--labels", labels, "--out", out,
                  *TINY_OVERRIDES, "folds=2", *extra)


def _write(path: Path, data: bytes | str) -> Path:
    path.write_bytes(data if isinstance(data, bytes) else data.encode())
    return path


def _rows(toy: Path) -> list[dict[str, str]]:
    with (toy / "labels.csv").open(newline="") as f:
        return list(csv.DictReader(f))


def _labels(path: Path, rows: list[dict[str, str]], delimiter: str = ",",
            bom: bool = False) -> Path:
    header = list(rows[0])
    text = delimiter.join(header) + "\r\n" + "".join(
        delimiter.join(r[h] for h in header) + "\r\n" for r in rows)
    return _write(path, (b"\xef\xbb\xbf" if bom else b"") + text.encode())


def _typo(tmp: Path, toy: Path) -> Path:
    rows = _rows(toy)
    rows[0]["label"] = "negatve"
    return _labels(tmp / "labels.csv", rows)


def _copy_features(tmp: Path, toy: Path) -> Path:
    feats = tmp / "features"
    shutil.copytree(toy, feats)
    return feats


def _other_dim(tmp: Path, toy: Path, mag: str, index: int, dim: int) -> Path:
    """The `index`-th slide's `mag` features `dim`-d among 16-d ones."""
    feats = _copy_features(tmp, toy)
    path = sorted((feats / mag).glob("*.h5"))[index]
    with h5py.File(path, "a") as f:
        n = f["features"].shape[0]
        del f["features"]
        f.create_dataset("features", data=np.zeros((n, dim), dtype=np.float32))
    return feats


def _corrupt(tmp: Path, toy: Path) -> Path:
    feats = _copy_features(tmp, toy)
    _write(feats / "lr" / "slide_007.h5", b"garbage")
    return feats


def _without_lr(tmp: Path, toy: Path) -> Path:
    feats = _copy_features(tmp, toy)
    shutil.rmtree(feats / "lr")
    return feats


BAD_SPLITS = "slide,fold_1,fold_2\nslide_000,tset,train\n"

# (case, make(tmp, toy) -> (features, labels, overrides, named in the line))
CASES = {
    "student.lr negative": lambda tmp, toy: (toy, None, ["student.lr=-1"],
                                             ["student.lr must be > 0, got -1"]),
    "device tpu": lambda tmp, toy: (toy, None, ["device=tpu"], ["device must be", "'tpu'"]),
    "kd.t_bag zero": lambda tmp, toy: (toy, None, ["kd.t_bag=0"], ["kd.t_bag must be > 0"]),
    "mil.hidden zero": lambda tmp, toy: (toy, None, ["mil.hidden=0"],
                                         ["mil.hidden must be >= 1"]),
    "kd.lambda_bag negative": lambda tmp, toy: (toy, None, ["kd.lambda_bag=-1"],
                                                ["kd.lambda_bag must be >= 0"]),
    "student.patience zero": lambda tmp, toy: (toy, None, ["student.patience=0"],
                                               ["student.patience must be >= 1"]),
    "data.cache_gb negative": lambda tmp, toy: (toy, None, ["data.cache_gb=-1"],
                                                ["data.cache_gb must be >= 0"]),
    "stage1.shuffle_mb zero": lambda tmp, toy: (toy, None, ["stage1.shuffle_mb=0"],
                                                ["stage1.shuffle_mb must be >= 1"]),
    "a typo in a setting": lambda tmp, toy: (toy, None, ["kd.lambda_bgg=1"],
                                             ["unknown setting kd.lambda_bgg"]),
    "config not UTF-8": lambda tmp, toy: (
        toy, None, ["--config", _write(tmp / "c.yaml", b"seed: 1 # r\xe9glages\n")],
        [tmp / "c.yaml", "not UTF-8"]),
    "config that does not parse": lambda tmp, toy: (
        toy, None, ["--config", _write(tmp / "c.toml", "seed = = 1\n")],
        [tmp / "c.toml", "cannot be parsed"]),
    "labels CSV missing": lambda tmp, toy: (toy, tmp / "nope.csv", [],
                                            [tmp / "nope.csv", "does not exist"]),
    "labels CSV not UTF-8": lambda tmp, toy: (
        toy, _write(tmp / "l.csv", b"slide,label\nslide_000,n\xe9g\n"), [],
        [tmp / "l.csv", "line 2: not UTF-8"]),
    "labels CSV without a label column": lambda tmp, toy: (
        toy, _write(tmp / "l.csv", "slide,class\nslide_000,1\n"), [],
        [tmp / "l.csv", "slide,label"]),
    "a class of one slide (typo)": lambda tmp, toy: (
        toy, _typo(tmp, toy), [], ["class 'negatve' has 1 slide(s)", "a typo in the label?"]),
    "a labelled slide without features": lambda tmp, toy: (
        toy, _labels(tmp / "l.csv", [*_rows(toy), {**_rows(toy)[0], "slide": "ghost"}]), [],
        ["ghost", "no features file"]),
    "one slide's features of another size": lambda tmp, toy: (
        _other_dim(tmp, toy, "lr", 3, 12), None, [], ["slide_003", "mix embedding sizes"]),
    "features folder missing": lambda tmp, toy: (tmp / "nofeat", toy / "labels.csv", [],
                                                 [tmp / "nofeat", "does not exist"]),
    "splits file with a bad role": lambda tmp, toy: (
        toy, None, [f"splits_csv={_write(tmp / 's.csv', BAD_SPLITS)}"], [tmp / "s.csv", "'tset'"]),
    "labels CSV empty": lambda tmp, toy: (toy, _write(tmp / "l.csv", ""), [],
                                          [tmp / "l.csv", "is empty"]),
    "labels CSV with a header only": lambda tmp, toy: (
        toy, _write(tmp / "l.csv", "slide,label\n"), [], [tmp / "l.csv", "has no rows"]),
    "labels CSV that is a folder": lambda tmp, toy: (toy, toy, [], [toy, "is a folder"]),
    "labels CSV whose slides match no features": lambda tmp, toy: (
        toy, _write(tmp / "l.csv", "slide,label\nfoo,a\nbar,b\n"), [],
        [tmp / "l.csv", "2 slide(s) unknown to", "bar, foo"]),
    "labels CSV with a slide twice": lambda tmp, toy: (
        toy, _labels(tmp / "l.csv", [*_rows(toy), _rows(toy)[4]]), [],
        [tmp / "l.csv", "line 26", "slide 'slide_004' repeated"]),
    "labels CSV of a single class": lambda tmp, toy: (
        toy, _labels(tmp / "l.csv", [{**r, "label": "x"} for r in _rows(toy)]), [],
        [tmp / "l.csv", "single class 'x'"]),
    "one slide's HR features of another size": lambda tmp, toy: (
        _other_dim(tmp, toy, "hr", 5, 8), None, [],
        ["HR features in", "mix embedding sizes", "slide_005"]),
    "a features file that is not HDF5": lambda tmp, toy: (
        _corrupt(tmp, toy), None, [], ["slide_007.h5", "not a readable HDF5 file"]),
    "features folder without lr/": lambda tmp, toy: (
        _without_lr(tmp, toy), None, [], ["features folder", "lr does not exist"]),
    "config with a word for a number": lambda tmp, toy: (
        toy, None, ["--config", _write(tmp / "c.yaml", "seed: three\n")],
        [f"config file {tmp / 'c.yaml'}: seed must be int, got 'three'"]),
    "config section that is not a mapping": lambda tmp, toy: (
        toy, None, ["--config", _write(tmp / "c.yaml", "student: 5\n")],
        [tmp / "c.yaml", "student must be a mapping, got 5"]),  # overrides set student.*
}


@pytest.mark.parametrize("case", CASES)
def test_refused_before_anything_is_written(case, tmp_path, toy):
    features, labels, extra, named = CASES[case](tmp_path, toy)
    labels = labels or (features / "labels.csv" if features.is_dir() else toy / "labels.csv")
    out = tmp_path / "run"
    assert_one_line(_distill(features, labels, out, *extra), *named)
    assert not out.exists()


def test_a_full_disk_is_one_line_and_leaves_no_file(tmp_path, toy, monkeypatch):
    """(After the cohort's summary.)"""
    disk_full(monkeypatch, "config.json")
    out = tmp_path / "run"
    assert_one_error_after_work(_distill(toy, toy / "labels.csv", out), out / "config.json",
                                "No space left on device")
    assert files_under(out) == []


def test_a_full_disk_while_saving_weights_is_one_line(tmp_path, toy, monkeypatch):
    """safetensors reports a full disk as its own SafetensorError (it was 'internal error ... a
    bug'): one line naming the weights file; what was finished is kept for the re-run."""
    import safetensors.torch
    from safetensors import SafetensorError

    real = safetensors.torch.save_file

    def save_file(tensors, filename, *args, **kwargs):
        if ".teacher.safetensors." in filename:  # its temporary name
            raise SafetensorError("Error while serializing: I/O error: No space left on device "
                                  "(os error 28)")
        return real(tensors, filename, *args, **kwargs)

    monkeypatch.setattr(safetensors.torch, "save_file", save_file)
    out = tmp_path / "run"
    assert_one_error_after_work(_distill(toy, toy / "labels.csv", out),
                                out / "fold_1" / "teacher.safetensors", "No space left on device")
    assert not (out / "fold_1" / "teacher.safetensors").exists()
    assert [f for f in files_under(out) if ".tmp" in f] == []


def test_out_is_an_existing_file(tmp_path, toy):
    out = _write(tmp_path / "run", "keep me")
    assert_one_line(_distill(toy, toy / "labels.csv", out), out, "--out must be a folder")
    assert out.read_text() == "keep me"


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_cuda_is_one_line(tmp_path, toy):
    assert_one_line(_distill(toy, toy / "labels.csv", tmp_path / "run", "device=cuda"),
                    "device cuda", "no CUDA device")
    assert not (tmp_path / "run").exists()


def test_a_refused_run_leaves_nothing_and_the_corrected_command_runs(tmp_path, toy):
    """The settings check used to leave config.json behind, and the same --out was then refused
    as 'made with other settings'. Labels saved by Excel (BOM, `;`), naming slides by file
    name, are read as they are."""
    out = tmp_path / "run"
    rows = [{**r, "slide": f"{r['slide']}.svs"} for r in _rows(toy)]
    labels = _labels(tmp_path / "excel.csv", rows, delimiter=";", bom=True)
    assert_one_line(_distill(toy, labels, out, "student.lr=-1"), "student.lr")
    assert not out.exists()
    result = _distill(toy, labels, out)
    assert result.exit_code == 0, result.output
    assert (out / "config.json").is_file() and (out / "metrics.json").is_file()


@pytest.mark.parametrize("args, named", [
    (["distill", "--features", "f", "--out", "r"], ["Missing option '--labels'"]),
    (["distill", "--features", "f", "--labels", "l.csv", "--out", "r", "--fold", "1"],
     ["No such option: --fold"]),
    (["distill", "--features"], ["--features", "requires an argument"]),
])
def test_a_usage_error_is_one_line_exit_2(args, named):
    assert_usage_error(invoke(*args), "distill", *named)
