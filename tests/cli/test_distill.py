import json
import re

import pytest
import torch
from lrmil.cli.main import app
from typer.testing import CliRunner

from lrmil.distill.toy import TINY_OVERRIDES, write_toy_features


@pytest.fixture(scope="module")
def features(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli_features")
    write_toy_features(out, n_slides=24, n_lr=8, dim=16, hr_signal=4.0, lr_signal=1.0, seed=2)
    return out


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: threads only spin
    yield
    torch.set_num_threads(before)


def test_distill_runs_and_prints_the_report(features, tmp_path):
    config = tmp_path / "cfg.yaml"
    config.write_text("seed: 3\nkd:\n  attn_map: mean\n")
    out = tmp_path / "run"
    args = ["distill", "--features", str(features), "--labels", str(features / "labels.csv"),
            "--out", str(out), "--config", str(config), *TINY_OVERRIDES, "folds=2"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    for word in ("teacher", "baseline", "student", "AUC", "gap"):  # the table (cells wrap)
        assert word in result.output
    assert "LR baseline" in (out / "report.md").read_text()
    saved = json.loads((out / "config.json").read_text())
    assert saved["seed"] == 3 and saved["kd"]["attn_map"] == "mean" and saved["folds"] == 2
    assert (out / "roc.png").is_file() and (out / "fold_2" / "student.safetensors").is_file()


@pytest.mark.parametrize("extra, message", [
    (["kd.lambda_bgg=1"], "unknown setting kd.lambda_bgg"),
    (["stage1.mode=encoder", "folds=2"], "needs --tiled|give --tiled"),
])
def test_known_errors_are_one_line(features, tmp_path, extra, message):
    args = ["distill", "--features", str(features), "--labels", str(features / "labels.csv"),
            "--out", str(tmp_path / "run"), *TINY_OVERRIDES, *extra]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 1
    assert "error:" in result.output and "Traceback" not in result.output
    assert re.search(message, result.output), result.output


def test_missing_labels_file(features, tmp_path):
    result = CliRunner().invoke(app, ["distill", "--features", str(features), "--labels",
                                      str(tmp_path / "nope.csv"), "--out", str(tmp_path / "r")])
    assert result.exit_code == 1 and "nope.csv does not exist" in result.output
