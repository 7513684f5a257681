"""Config loading: shipped names, overrides, validation errors that list the valid keys."""

import pytest

from medgen.config import StrictModel, config_hash, flatten, load_config
from medgen.errors import ConfigError


class Optim(StrictModel):
    lr: float = 1e-3
    betas: tuple[float, float] = (0.5, 0.999)


class Cfg(StrictModel):
    name: str = "x"
    optim: Optim = Optim()


@pytest.fixture
def cfg_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("name: test\noptim:\n  lr: 0.01\n")
    return path


def test_load_and_override(cfg_file):
    cfg = load_config(cfg_file, Cfg, default="unused", overrides=["optim.lr=0.5", "optim.betas=[0.9, 0.99]"])
    assert cfg.name == "test" and cfg.optim.lr == 0.5 and cfg.optim.betas == (0.9, 0.99)


def test_unknown_override_key_lists_valid_keys(cfg_file):
    with pytest.raises(ConfigError) as err:
        load_config(cfg_file, Cfg, default="unused", overrides=["optim.momentum=0.9"])
    text = str(err.value)
    assert "optim.momentum" in text and "optim.lr" in text and "optim.betas" in text


def test_wrong_type_names_key(cfg_file):
    with pytest.raises(ConfigError) as err:
        load_config(cfg_file, Cfg, default="unused", overrides=["optim.lr=fast"])
    assert "optim.lr" in str(err.value)


def test_unknown_key_in_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("name: a\nextra: 1\n")
    with pytest.raises(ConfigError, match="unknown key 'extra'"):
        load_config(path, Cfg, default="unused")


def test_yaml_is_data_not_code(tmp_path):
    path = tmp_path / "evil.yaml"
    path.write_text("name: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(path, Cfg, default="unused")


def test_missing_config_names_shipped_ones():
    with pytest.raises(ConfigError, match="neither a config file nor a shipped config"):
        load_config("no/such_config", Cfg, default="unused")


def test_hash_and_flatten_are_stable():
    a, b = Cfg(), Cfg(optim=Optim(lr=0.1))
    assert config_hash(a) == config_hash(Cfg()) != config_hash(b)
    assert flatten(b)["optim.lr"] == 0.1


def test_partial_section_keeps_the_default_instance(tmp_path):
    """A YAML or --set naming one key of a section whose default instance differs from its class
    defaults (preprocess.mr is PreprocessConfig(modality="mr")) keeps the instance's other values."""
    from medgen.training.translator import TranslatorConfig
    path = tmp_path / "t.yaml"
    path.write_text("preprocess:\n  mr:\n    spacing: [3.0, 3.0, 3.0]\n")
    cfg = load_config(path, TranslatorConfig, default="unused", overrides=["preprocess.ct.spacing=[3.0,3.0,3.0]"])
    assert cfg.preprocess.mr.modality == "mr" and cfg.preprocess.ct.modality == "ct"
    assert tuple(cfg.preprocess.mr.spacing) == tuple(cfg.preprocess.ct.spacing) == (3.0, 3.0, 3.0)
    default = TranslatorConfig()
    assert cfg.preprocess.ct.ct == default.preprocess.ct.ct  # the CT window etc. of the default instance
    assert cfg.model == default.model and cfg.train == default.train
