"""Pipeline config: profiles, overrides, errors that name the bad key, and deprecated keys that
still load (one warning each, naming the new key)."""

import logging
import os
import subprocess
import sys

import pytest
import yaml

from domain_lm.config import PROFILES, RENAMED_KEYS, PpoSection, SftSection, build_config, load_config
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
    with pytest.raises(ConfigError, match=r"ppo.train.batch_size .* must not exceed ppo.rollout.batch_size"):
        build_config({"ppo": {"train": {"batch_size": 16}, "rollout": {"batch_size": 4}}})
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


def test_peft_section_is_shared_and_ppo_is_composed():
    cfg = build_config({"sft": {"peft": {"method": "full"}}, "ppo": {"train": {"max_steps": 3}}})
    assert cfg.sft.peft.method == "full" and cfg.dpo.peft.method == "lora"
    assert cfg.sft.peft.top_layers == PROFILES["quick"]["sft"]["peft"]["top_layers"]
    # Continued pretraining fine-tunes the full weights unless told otherwise, also when a peft key is set.
    assert cfg.pretrain.peft.method == "full" and cfg.pretrain.peft.top_layers is None
    assert build_config({"pretrain": {"peft": {"top_layers": 12}}}).pretrain.peft.method == "full"
    # PPO: TrainSection (with PPO's defaults where the file is silent) + rollout + tricks
    assert cfg.ppo.train.max_steps == 3 and cfg.ppo.train.learning_rate == PROFILES["quick"]["ppo"]["train"]["learning_rate"]
    assert PpoSection(train={"max_steps": 5}).train.learning_rate == 1e-5
    assert cfg.ppo.rollout.batch_size == 8 and cfg.ppo.tricks.use_ptx is True and cfg.rlhf.algorithm == "ppo"
    with pytest.raises(ConfigError, match="ppo.train.grad_accum is not used by the PPO loop"):
        build_config({"ppo": {"train": {"grad_accum": 2}}})
    with pytest.raises(ConfigError, match="ppo.peft.method must be 'lora'"):
        build_config({"ppo": {"peft": {"method": "full"}}})


def test_resolved_config_loads_back(tmp_path):
    """What `pipeline show-config` prints is a valid config again (docs/deploy.md starts from it)."""
    cfg = build_config({"profile": "full"})
    p = tmp_path / "resolved.yaml"
    p.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    assert load_config(p) == cfg


def test_deprecated_keys_load_with_one_warning_naming_the_new_key(tmp_path, caplog):
    p = tmp_path / "old.yaml"
    p.write_text(
        "sft:\n  lora_top_layers: 8\n  lora: {r: 4}\n  method: lora\n"
        "ppo:\n  algorithm: both\n  steps: 7\n  mini_batch_size: 2\n  use_ptx: false\n  max_new_tokens: 12\n"
        "reward:\n  enabled: true\n"
    )
    with caplog.at_level(logging.WARNING, logger="domain_lm.config"):
        cfg = load_config(p, ["sft.lora.alpha=8", "ppo.lora_top_layers=2"])
    assert cfg.sft.peft.top_layers == 8 and cfg.sft.peft.lora.r == 4 and cfg.sft.peft.lora.alpha == 8
    assert cfg.rlhf.algorithm == "both" and cfg.ppo.train.max_steps == 7 and cfg.ppo.train.batch_size == 2
    assert cfg.ppo.tricks.use_ptx is False and cfg.ppo.rollout.max_new_tokens == 12 and cfg.ppo.peft.top_layers == 2
    messages = [r.getMessage() for r in caplog.records]
    renamed = [("sft.lora_top_layers", "sft.peft.top_layers"), ("ppo.algorithm", "rlhf.algorithm"), ("ppo.steps", "ppo.train.max_steps"),
               ("sft.lora", "sft.peft.lora"), ("ppo.lora_top_layers", "ppo.peft.top_layers")]
    for old, new in renamed:
        hits = [m for m in messages if f"'{old}'" in m]
        assert len(hits) == 1 and f"'{new}'" in hits[0] and "deprecated" in hits[0], (old, messages)
    assert any("'reward.enabled'" in m and "no effect" in m for m in messages)
    # the old key loses to nothing: old and new names together are an error, unknown keys still are
    with pytest.raises(ConfigError, match="both 'sft.lora_top_layers' and its new name 'sft.peft.top_layers'"):
        build_config({"sft": {"lora_top_layers": 2, "peft": {"top_layers": 3}}})
    with pytest.raises(ConfigError, match="unknown key 'ppo.stepz'"):
        build_config({"ppo": {"stepz": 3}})


def test_old_key_beats_the_profile_default_and_maps_everything():
    """A user's old key wins over the profile's value for the new key, as it did before."""
    assert build_config({"sft": {"lora_top_layers": 2}}).sft.peft.top_layers == 2
    assert SftSection(lora={"r": 2}).peft.lora.r == 2  # code building a section directly
    # every renamed key lands on a key the config has
    for old, new in RENAMED_KEYS.items():
        node = build_config({}).model_dump()
        for part in new.split("."):
            assert part in node, (old, new)
            node = node[part]


def test_show_config_prints_new_keys_and_warns_once_on_stderr(tmp_path):
    p = tmp_path / "old.yaml"
    p.write_text("sft:\n  lora_top_layers: 8\n")
    proc = subprocess.run([sys.executable, "-m", "domain_lm", "pipeline", "show-config", str(p)],
                          capture_output=True, text=True, timeout=120, env={**os.environ, "COLUMNS": "300"})
    assert proc.returncode == 0, proc.stderr
    shown = yaml.safe_load(proc.stdout)
    assert shown["sft"]["peft"]["top_layers"] == 8 and "lora_top_layers" not in shown["sft"]
    assert proc.stderr.count("lora_top_layers") == 1 and "sft.peft.top_layers" in proc.stderr


def test_each_stage_keeps_its_own_training_defaults_when_some_train_keys_are_set(tmp_path):
    """Setting one `train` key (profiles set several) must not reset the stage's other defaults to
    the generic TrainSection's: the quick profile's DPO trains at DPO's 5e-5, not 2e-4."""
    from domain_lm.config import DpoSection, RewardSection, TrainSection
    from domain_lm.train.common import training_arguments

    quick = build_config({})
    assert "learning_rate" not in PROFILES["quick"]["dpo"]["train"]
    assert quick.dpo.train.learning_rate == 5e-5 and quick.dpo.train.max_steps == PROFILES["quick"]["dpo"]["train"]["max_steps"]
    full = build_config({"profile": "full"})
    assert full.reward.train.learning_rate == 1e-4 and full.dpo.train.learning_rate == 5e-5
    assert full.sft.train.learning_rate == 2e-4
    assert DpoSection(train={"max_steps": 3}).train.learning_rate == 5e-5
    assert RewardSection(train={"batch_size": 2}).train.learning_rate == 1e-4
    # The file still wins over the stage default, and every stage's section is still a TrainSection.
    assert build_config({"dpo": {"train": {"learning_rate": 1e-6}}}).dpo.train.learning_rate == 1e-6
    for name in ("pretrain", "sft", "reward", "dpo", "ppo"):
        assert isinstance(getattr(quick, name).train, TrainSection)
    # What the trainers are built with: the stage's learning rate reaches TrainingArguments.
    for name in ("pretrain", "sft", "reward", "dpo"):
        section = getattr(quick, name).train
        args = training_arguments(section, tmp_path / name)
        assert args.learning_rate == section.learning_rate and args.max_steps == section.max_steps
