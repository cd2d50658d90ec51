import dataclasses

import pytest

from pneumoscan.config import Config, ConfigError, apply_overrides, load_config


def test_defaults_are_frozen():
    cfg = Config()
    assert cfg.data.val_fraction == 0.1
    assert cfg.model.image_size == 224
    assert cfg.eval.target_sensitivity == 0.95
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.train.lr = 1.0  # type: ignore[misc]


def test_toml_yaml_and_json_round_trip(tmp_path):
    (tmp_path / "c.toml").write_text('[model]\nname = "seed-cnn"\nimage_size = 160\n[train]\nlr = 0.01\n')
    (tmp_path / "c.yaml").write_text("model:\n  name: seed-cnn\n  image_size: 160\ntrain:\n  lr: 0.01\n")
    a = load_config(tmp_path / "c.toml")
    b = load_config(tmp_path / "c.yaml")
    assert a == b
    assert a.model.name == "seed-cnn" and a.model.image_size == 160 and a.train.lr == 0.01
    (tmp_path / "c.json").write_text(a.to_json())
    assert load_config(tmp_path / "c.json") == a
    assert Config.from_dict(a.to_dict()) == a


def test_overrides_parse_types():
    cfg = apply_overrides(Config(), ["train.epochs=3", "augment.hflip=false", "model.name=deep-cnn", "train.lr=3e-4"])
    assert cfg.train.epochs == 3
    assert cfg.augment.hflip is False
    assert cfg.model.name == "deep-cnn"
    assert cfg.train.lr == pytest.approx(3e-4)
    assert load_config(None, ["data.split_seed=7"]).data.split_seed == 7


@pytest.mark.parametrize(
    "override, fragment",
    [
        ("train.nope=1", "unknown key 'train.nope'"),
        ("nosection.x=1", "unknown section 'nosection'"),
        ("train.epochs=abc", "'train.epochs' must be an integer"),
        ("train", "section.key=value"),
        ("augment.hflip=maybe", "true or false"),
    ],
)
def test_bad_overrides_say_what_is_wrong(override, fragment):
    with pytest.raises(ConfigError, match=fragment.replace(".", r"\.").replace("(", r"\(")):
        apply_overrides(Config(), [override])


def test_bad_files_name_the_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[train\n")
    with pytest.raises(ConfigError, match="bad.toml: cannot parse"):
        load_config(bad)
    unknown = tmp_path / "unknown.toml"
    unknown.write_text("[train]\nlearning_rate = 1\n")
    with pytest.raises(ConfigError, match=r"unknown.toml: unknown config key\(s\) train.learning_rate"):
        load_config(unknown)
    ext = tmp_path / "c.ini"
    ext.write_text("")
    with pytest.raises(ConfigError, match="unsupported config format"):
        load_config(ext)


def test_data_val_defaults_to_the_seeded_split_and_reads_from_old_configs(tmp_path):
    """data.val (train --val): empty means the seeded patient-level split; a run's config.json written before
    the key existed loads as that."""
    cfg = Config()
    assert cfg.data.val == "" and cfg.data.val_split == ""
    given = apply_overrides(cfg, ["data.val=/sites/a/val.csv", "data.val_split=val"])
    assert given.data.val == "/sites/a/val.csv" and given.data.val_split == "val"
    assert Config.from_dict(given.to_dict()) == given
    old = cfg.to_dict()
    del old["data"]["val"], old["data"]["val_split"]
    (tmp_path / "config.json").write_text(__import__("json").dumps(old))
    assert load_config(tmp_path / "config.json") == cfg
