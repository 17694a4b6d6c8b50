import pytest

from lrmil.distill.config import DistillConfig, load_config
from lrmil.errors import ConfigError


def test_defaults_are_valid_and_documented_values():
    cfg = load_config()
    assert cfg == DistillConfig()
    assert cfg.folds == 5 and cfg.mil.hidden == 128 and cfg.stage1.mode == "encoder"


def test_yaml_then_fields_then_dotted_overrides(tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_text("folds: 3\nkd:\n  lambda_bag: 0.25\n  attn_map: mean\nmil:\n  proj_dim: 64\n")
    cfg = load_config(path, ["kd.lambda_bag=0.5", "stage1.mode=adapter", "teacher.lr=3e-3",
                             "ablations=no_stage1,no_logit_kd", "mil.proj_dim=null"],
                      out="run")
    assert cfg.folds == 3
    assert cfg.kd.lambda_bag == 0.5 and cfg.kd.attn_map == "mean"
    assert cfg.stage1.mode == "adapter" and cfg.out == "run" and cfg.teacher.lr == 3e-3
    assert cfg.ablations == ["no_stage1", "no_logit_kd"]
    assert cfg.mil.proj_dim is None


def test_toml(tmp_path):
    path = tmp_path / "cfg.toml"
    path.write_text("seed = 7\n[teacher]\nepochs = 3\nlr = 1e-3\n")
    cfg = load_config(path)
    assert cfg.seed == 7 and cfg.teacher.epochs == 3 and cfg.teacher.lr == 1e-3


@pytest.mark.parametrize("override, message", [
    ("kd.lambda_bgg=1", "unknown setting kd.lambda_bgg"),
    ("folds=three", "folds must be int"),
    ("teacher.lr=fast", "teacher.lr must be float"),
    ("teacher.epochs=1.5", "teacher.epochs must be int"),
    ("stage1.mode=pixels", "stage1.mode must be"),
    ("ablations=no_teacher", "unknown ablations"),
    ("folds=1", "folds must be >= 2"),
    ("nonsense", "must look like key.sub=value"),
])
def test_bad_settings_are_named(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(overrides=[override])


def test_bad_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("folds: [1,\n")
    with pytest.raises(ConfigError, match="cannot be parsed"):
        load_config(bad)
