"""Pipeline config: profiles, overrides, and errors that name the bad key."""

import pytest

from domain_lm.config import PROFILES, build_config, load_config
from domain_lm.errors import ConfigError


def test_embedded_default_is_quick_profile():
    cfg = load_config(None)
    assert cfg.profile == "quick"
    assert cfg.pretrain.train.max_steps == PROFILES["quick"]["pretrain"]["train"]["max_steps"]
    assert cfg.base_model.name == "smollm2-135m"


def test_full_profile_changes_hyperparameters_and_yaml_wins_over_profile(tmp_path):
    p = tmp_path / "run.yaml"
    p.write_text("profile: full\nsft:\n  train:\n    batch_size: 3\n")
    cfg = load_config(p)
    assert cfg.sft.train.batch_size == 3  # the file overrides the profile
    assert cfg.sft.train.max_seq_len == PROFILES["full"]["sft"]["train"]["max_seq_len"]
    assert cfg.pretrain.train.max_steps == -1  # full runs by epochs


def test_overrides_are_typed_and_nested():
    cfg = build_config({}, ["sft.train.max_steps=7", "pretrain.enabled=false", "corpus.near_dup_threshold=0.9", "run.name=x1"])
    assert cfg.sft.train.max_steps == 7
    assert cfg.pretrain.enabled is False
    assert cfg.corpus.near_dup_threshold == 0.9
    assert cfg.run.name == "x1"


def test_unknown_key_names_the_key(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("sft:\n  train:\n    learnin_rate: 0.1\n")
    with pytest.raises(ConfigError) as e:
        load_config(p)
    msg = str(e.value)
    assert "sft.train.learnin_rate" in msg and "unknown key" in msg and str(p) in msg


def test_bad_value_names_key_and_reason():
    with pytest.raises(ConfigError) as e:
        build_config({"corpus": {"near_dup_threshold": 1.5}})
    assert "corpus.near_dup_threshold" in str(e.value) and "less than or equal to 1" in str(e.value)


def test_cross_field_check_and_bad_profile():
    with pytest.raises(ConfigError, match="mini_batch_size"):
        build_config({"ppo": {"mini_batch_size": 16, "rollout_batch_size": 4}})
    with pytest.raises(ConfigError, match="profile"):
        build_config({"profile": "huge"})


def test_missing_file_and_non_mapping(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    p = tmp_path / "list.yaml"
    p.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(p)


def test_malformed_override():
    with pytest.raises(ConfigError, match="key=value"):
        build_config({}, ["sft.train.max_steps"])
    with pytest.raises(ConfigError, match="not a section"):
        build_config({"run": {"name": "a"}}, ["run.name.x=1"])
    with pytest.raises(ConfigError, match="profile"):
        build_config({}, ["profile.x=1"])
