"""The config contract: YAML + overrides, unknown keys with did-you-mean, typed errors, missing files."""

import json

import pytest
import yaml

from tunelab.config import ConfigError, json_schema, load_config


def write(tmp_path, doc) -> str:
    p = tmp_path / "cfg.yaml"
    p.write_text(yaml.safe_dump(doc))
    return str(p)


BASE = {"name": "t", "data": {"train": "train.csv"}}


def test_loads_with_defaults_and_resolves_paths_against_the_config_folder(tmp_path):
    cfg = load_config(write(tmp_path, BASE))
    assert cfg.method.name == "lora" and cfg.train.precision == "auto"
    assert cfg.resolve(cfg.data.train) == tmp_path / "train.csv"


def test_overrides_are_typed(tmp_path):
    cfg = load_config(write(tmp_path, BASE), ["train.lr=1e-4", "train.patience=null", "method.target_modules=[q_proj, v_proj]"])
    assert cfg.train.lr == 1e-4 and cfg.train.patience is None
    assert cfg.method.target_modules == ["q_proj", "v_proj"]


def test_unknown_key_gets_did_you_mean(tmp_path):
    with pytest.raises(ConfigError) as e:
        load_config(write(tmp_path, {**BASE, "train": {"lr": 1e-4, "epoch": 2}}))
    msg = str(e.value)
    assert "train.epoch: unknown key" in msg and "did you mean 'train.epochs'" in msg
    assert "cfg.yaml" in msg


def test_unknown_override_section_and_top_level_key(tmp_path):
    with pytest.raises(ConfigError, match="did you mean 'method'"):
        load_config(write(tmp_path, {**BASE, "methd": {"name": "lora"}}))
    with pytest.raises(ConfigError, match="train.lrr: unknown key; did you mean 'train.lr'"):
        load_config(write(tmp_path, BASE), ["train.lrr=1"])


def test_wrong_type_names_field_and_value(tmp_path):
    with pytest.raises(ConfigError) as e:
        load_config(write(tmp_path, {**BASE, "train": {"batch_size": "eight"}}))
    assert "train.batch_size" in str(e.value) and "'eight'" in str(e.value)
    with pytest.raises(ConfigError, match="method.name"):
        load_config(write(tmp_path, {**BASE, "method": {"name": "lorra"}}))


def test_missing_required_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="data: required field is missing"):
        load_config(write(tmp_path, {"name": "x"}))
    with pytest.raises(ConfigError, match="config file not found: .*nope.yaml"):
        load_config(tmp_path / "nope.yaml")


def test_bad_yaml_names_line(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("name: x\ndata:\n  train: [a\n")
    with pytest.raises(ConfigError, match=r"bad.yaml line \d+: not valid YAML"):
        load_config(p)


def test_every_field_is_documented_once_in_the_schema():
    schema = json_schema()
    undocumented = []
    for name, model in schema["$defs"].items():
        for field, spec in model["properties"].items():
            if not spec.get("description"):
                undocumented.append(f"{name}.{field}")
    top = [f for f, s in schema["properties"].items() if not s.get("description")]
    assert not undocumented and not top, undocumented + top
    json.dumps(schema)
