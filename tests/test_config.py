"""Configs are validated on load; errors name the file and the key."""

import pytest

from biocnn.config import StrictModel, TrainConfig, load_config
from biocnn.errors import ConfigError


class DemoConfig(StrictModel):
    name: str
    train: TrainConfig = TrainConfig()


def _write(tmp_path, text):
    path = tmp_path / "cfg.yaml"
    path.write_text(text)
    return path


def test_valid_config_and_defaults(tmp_path):
    cfg = load_config(
        _write(tmp_path, "name: x\ntrain:\n  lr: 0.01\n  early_stopping: {monitor: val_auc, mode: max}\n"), DemoConfig
    )
    assert cfg.train.lr == 0.01 and cfg.train.early_stopping.monitor == "val_auc" and cfg.train.epochs == 20


def test_unknown_key_names_file_and_dotted_key(tmp_path):
    path = _write(tmp_path, "name: x\ntrain:\n  learning_rate: 0.01\n")
    with pytest.raises(ConfigError) as err:
        load_config(path, DemoConfig)
    assert str(err.value) == f"{path}: train.learning_rate: unknown key"


def test_wrong_type_names_the_key(tmp_path):
    path = _write(tmp_path, "name: x\ntrain:\n  epochs: many\n")
    with pytest.raises(ConfigError, match=r"cfg.yaml: train.epochs: Input should be a valid integer"):
        load_config(path, DemoConfig)
    with pytest.raises(ConfigError, match=r"train.optimizer"):
        load_config(_write(tmp_path, "name: x\ntrain: {optimizer: rmsprop}\n"), DemoConfig)


def test_missing_file_bad_yaml_and_non_mapping(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "absent.yaml", DemoConfig)
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(_write(tmp_path, "name: [unclosed\n"), DemoConfig)
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_config(_write(tmp_path, "- a\n- b\n"), DemoConfig)


def test_overrides_replace_dotted_keys(tmp_path):
    cfg = load_config(_write(tmp_path, "name: x\n"), DemoConfig, {"train.lr": 0.5, "name": "y", "train.epochs": None})
    assert cfg.train.lr == 0.5 and cfg.name == "y" and cfg.train.epochs == 20
