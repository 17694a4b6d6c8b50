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


def _numeric_settings(cls=DistillConfig, prefix=""):
    """Every setting whose type is int or float (optionally None), over the dataclass tree."""
    import dataclasses
    import typing

    names = []
    for name, hint in typing.get_type_hints(cls).items():
        if dataclasses.is_dataclass(hint):
            names += _numeric_settings(hint, f"{prefix}{name}.")
        elif {int, float} & set(typing.get_args(hint) or (hint,)):
            names.append(f"{prefix}{name}")
    return names


def test_every_numeric_setting_has_a_range():
    from lrmil.distill.config import RANGES

    numeric = _numeric_settings()
    assert "data.cache_gb" in numeric and "stage1.shuffle_mb" in numeric
    assert sorted(numeric) == sorted(RANGES)


@pytest.mark.parametrize("override, message", [
    ("student.lr=-1", r"student.lr must be > 0, got -1"),
    ("teacher.lr=0", r"teacher.lr must be > 0"),
    ("kd.t_bag=0", r"kd.t_bag must be > 0"),
    ("kd.t_attn=-1", r"kd.t_attn must be > 0"),
    ("mil.hidden=0", r"mil.hidden must be >= 1"),
    ("mil.proj_dim=0", r"mil.proj_dim must be >= 1"),
    ("mil.dropout=1", r"mil.dropout must be >= 0 and < 1"),
    ("kd.lambda_bag=-1", r"kd.lambda_bag must be >= 0"),
    ("stage1.lambda_attn=-0.5", r"stage1.lambda_attn must be >= 0"),
    ("student.patience=0", r"student.patience must be >= 1"),
    ("baseline.weight_decay=-1e-4", r"baseline.weight_decay must be >= 0"),
    ("val_fraction=1", r"val_fraction must be > 0 and < 1"),
    ("data.cache_gb=-1", r"data.cache_gb must be >= 0"),
    ("data.workers=-1", r"data.workers must be >= 0"),
    ("data.prefetch=0", r"data.prefetch must be >= 1"),
    ("stage1.shuffle_mb=0", r"stage1.shuffle_mb must be >= 1"),
    ("stage1.batch_patches=0", r"stage1.batch_patches must be >= 1"),
    ("teacher.lr=.nan", r"teacher.lr must be > 0, got nan"),
    ("kd.topk=0", r"kd.topk must be >= 1"),
    ("seed=-1", r"seed must be >= 0"),
    ("device=tpu", r"device must be auto, cpu, cuda or cuda:N, got 'tpu'"),
    ("device=cuda:x", r"device must be auto, cpu, cuda or cuda:N"),
])
def test_out_of_range_settings_are_named(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(overrides=[override])


def test_cuda_device_is_refused_where_there_is_none(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="device cuda: torch sees no CUDA device"):
        load_config(overrides=["device=cuda"])
    assert load_config(overrides=["device=cpu"]).device == "cpu"


def test_null_where_allowed_is_not_range_checked():
    cfg = load_config(overrides=["data.cache_gb=null", "mil.proj_dim=null"])
    assert cfg.data.cache_gb is None and cfg.mil.proj_dim is None


def test_config_file_not_utf8_is_one_line(tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_bytes("folds: 3\n# r\xe9glages\n".encode("latin-1"))
    with pytest.raises(ConfigError, match=r"cfg.yaml is not UTF-8 text \(byte 0xe9 on line 2\)"):
        load_config(path)


def test_config_file_with_bom_and_json(tmp_path):
    bom = tmp_path / "cfg.yaml"
    bom.write_bytes(b"\xef\xbb\xbffolds: 3\n")
    assert load_config(bom).folds == 3
    js = tmp_path / "cfg.json"
    js.write_text('{"kd": {"t_bag": 4}}')
    assert load_config(js).kd.t_bag == 4.0


def test_config_file_toml_error_and_wrong_suffix(tmp_path):
    bad = tmp_path / "cfg.toml"
    bad.write_text("folds = = 3\n")
    with pytest.raises(ConfigError, match="cfg.toml cannot be parsed"):
        load_config(bad)
    other = tmp_path / "cfg.ini"
    other.write_text("folds=3\n")
    with pytest.raises(ConfigError, match="use .yaml, .yml, .toml or .json"):
        load_config(other)
    listing = tmp_path / "list.yaml"
    listing.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        load_config(listing)


def test_toml_reader_on_python_3_10_is_tomli(monkeypatch):
    """On 3.10 tomllib does not exist: the reader takes tomli (a dependency there)."""
    import sys
    import types

    from lrmil.utils import configfile

    fake = types.ModuleType("tomli")
    fake.loads = lambda text: {"seed": 3}
    monkeypatch.setattr(sys, "version_info", (3, 10, 12))
    monkeypatch.setitem(sys.modules, "tomli", fake)
    assert configfile._toml() is fake
