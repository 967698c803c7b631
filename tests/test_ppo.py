"""PPO-Max on the tiny model: the actor moves, the reference and reward model stay frozen, every
metric is logged each step, KL early stop, resume, and the stage's artefacts."""

from __future__ import annotations

import json

import pytest
import torch

from domain_lm.config import build_config
from domain_lm.data.records import TaskRecord
from domain_lm.models.loading import load_causal_lm
from domain_lm.pipeline.run import run_stage
from domain_lm.pipeline.store import Run
from domain_lm.train import ppo
from tests.rlhf_fixtures import NEGATIVE, POSITIVE, label_template, separable_pairs_file

# task_score is logged only when a rollout has prompts with gold answers (these prompts have none)
LOGGED = [k for k in ppo.PLOT_KEYS if k != "task_score"]
LOGGED += ["policy_loss", "value_loss", "approx_kl", "ptx_loss", "reward_norm_mean", "return_mean"]


def prompts_file(path):
    rows = [{"prompt": f"Is this good news? {s}", "answer": "positive" if s in POSITIVE else "negative"} for s in POSITIVE + NEGATIVE]
    rows += [{"prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": f"Summarise: {s}"}]} for s in POSITIVE]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


@pytest.fixture(scope="module")
def rl_run(tmp_path_factory, tiny_model_dir):
    """A run directory with the base and a (briefly trained) reward stage."""
    tmp = tmp_path_factory.mktemp("ppo")
    overrides = [
        f"run.output_dir={tmp / 'runs'}",
        f"base_model.name={tiny_model_dir}",
        f"reward.preference_sources=[{separable_pairs_file(tmp / 'pairs.jsonl', n=8)}]",
        "reward.from_tasks=false",
        "reward.eval_fraction=0.25",
        "reward.train.max_steps=3",
        "reward.train.batch_size=4",
        "reward.train.max_seq_len=64",
        "reward.peft.lora.r=4",
        f"ppo.rollout.prompt_sources=[{prompts_file(tmp / 'prompts.jsonl')}]",
        "ppo.rollout.from_tasks=false",
        "ppo.train.max_steps=3",
        "ppo.rollout.batch_size=4",
        "ppo.train.batch_size=2",
        "ppo.rollout.max_new_tokens=8",
        "ppo.critic_warmup_steps=1",
        "ppo.train.learning_rate=5e-3",
        "ppo.critic_learning_rate=5e-3",
        "ppo.rollout.eval_prompts=3",
        "ppo.train.save_steps=1",
        "ppo.rollout.buffer_size=2",
        "ppo.tricks.ptx_batch_size=2",
        "ppo.peft.lora.r=4",
        "ppo.rollout.max_prompt_len=96",
    ]
    cfg = build_config({}, overrides)
    run_stage("base", cfg)
    run_stage("reward", cfg)
    return tmp, overrides


def _cfg(overrides, **extra):
    """The run's config with ``extra`` overrides, e.g. ``_cfg(o, **{"train.max_steps": 2})``."""
    return build_config({}, overrides + [f"ppo.{k}={v}" for k, v in extra.items()])


def _paths(cfg):
    run = Run.from_config(cfg)
    return run.load("base").artefact("model"), run.load("reward").artefact("reward_model")


def test_ppo_updates_actor_keeps_reference_and_reward_frozen_and_logs(rl_run, tiny_model_dir):
    tmp, overrides = rl_run
    # k3: an estimate that is never negative (k1, the default, averages log-ratios of a few sampled
    # tokens and can dip below 0 on another machine's sampling), so "the policy moved" is KL > 0.
    cfg = _cfg(overrides, kl_estimator="k3")
    policy, reward_path = _paths(cfg)
    work = tmp / "work-a"
    work.mkdir()
    result = ppo.train_ppo(policy, reward_path, cfg, work)
    state, summary = result.state, result.summary

    assert summary["steps_done"] == 3 and not summary["stopped_early"]
    # actor: LoRA B starts at zero; after two policy steps it is not
    lora_b = [p for n, p in state.actor.named_parameters() if "lora_B" in n]
    assert lora_b and max(p.abs().max().item() for p in lora_b) > 0
    # reference: the base weights inside the actor are bit-identical to the upstream model
    original = load_causal_lm(tiny_model_dir).state_dict()
    base = {n.replace("base_model.model.", "").replace(".base_layer", ""): p for n, p in state.actor.named_parameters() if "lora_" not in n}
    assert all(torch.equal(base[n], original[n]) for n in original if n in base) and len(base) >= len(original) - 1
    # ... so the adapter-disabled reference gives the upstream model's logits, the actor does not
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        with state.actor.disable_adapter():
            ref_logits = state.actor(input_ids=ids).logits
        act_logits = state.actor(input_ids=ids).logits
        up_logits = load_causal_lm(tiny_model_dir)(input_ids=ids).logits
    assert torch.allclose(ref_logits, up_logits, atol=1e-5)
    assert not torch.allclose(act_logits, up_logits, atol=1e-5)
    # reward model frozen: no gradients, weights equal to the saved reward model
    from domain_lm.train.reward import load_reward_model

    saved, _, _ = load_reward_model(reward_path)
    assert not any(p.requires_grad for p in state.reward_model.parameters())
    assert all(torch.equal(a, b) for a, b in zip(state.reward_model.state_dict().values(), saved.state_dict().values()))

    # every metric logged at every step; the actor metrics once the critic warm-up is over
    rows = [json.loads(line) for line in (work / "ppo_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert rows[0]["critic_warmup"] and "policy_loss" not in rows[0]
    for r in rows[1:]:
        missing = [k for k in LOGGED if k not in r]
        assert not missing, missing
        assert r["kl"] >= 0 and 1 <= r["response_length"] <= 8 and r["policy_ppl"] > 1
    assert rows[-1]["kl"] > 0  # the policy has moved away from the reference
    assert "heldout_reward_before" in summary and "heldout_reward_after" in summary


def test_ppo_kl_early_stop_and_resume(rl_run):
    tmp, overrides = rl_run
    policy, reward_path = _paths(_cfg(overrides))
    # any KL above 1e-9 stops the run. KL is measured on each step's rollout, before its update:
    # step 1 (critic warm-up) and step 2 roll out with actor == reference (KL exactly 0); step 2
    # makes the first policy update, so step 3's rollout has KL > 0 and the run stops there.
    # (k3: never negative, so a moved policy's KL is above the bound on any sampling.)
    result = ppo.train_ppo(policy, reward_path, _cfg(overrides, **{"train.max_steps": 5, "kl_stop_bound": 1e-9, "kl_estimator": "k3"}),
                           tmp / "work-b")
    state, summary = result.state, result.summary
    assert summary["stopped_early"] and summary["steps_done"] == 3
    assert [h["kl"] for h in state.history[:2]] == [0.0, 0.0] and state.history[-1]["kl"] > 1e-9
    assert (tmp / "work-b" / "checkpoint-3").is_dir()

    work = tmp / "work-c"
    work.mkdir()
    ppo.train_ppo(policy, reward_path, _cfg(overrides, **{"train.max_steps": 2}), work)
    assert (work / "checkpoint-2" / "state.json").is_file()
    result = ppo.train_ppo(policy, reward_path, _cfg(overrides, **{"train.max_steps": 3}), work, resume=True)
    state, summary = result.state, result.summary
    assert summary["resumed_from_step"] == 2 and summary["steps_done"] == 3
    assert [h["step"] for h in state.history] == [1, 2, 3]


def test_ppo_stage_artefacts(rl_run):
    _, overrides = rl_run
    cfg = _cfg(overrides, **{"train.max_steps": 2})
    res, _ = run_stage("ppo", cfg)
    for name in ("model", "adapter", "log", "tensorboard", "curves"):
        assert res.artefact(name).exists(), name
    assert res.metrics["steps_done"] == 2
    assert load_causal_lm(res.artefact("model")) is not None
    assert any(p.name.startswith("events.out.tfevents") for p in res.artefact("tensorboard").iterdir())


def test_response_mask_stops_after_first_eos():
    r = torch.tensor([[5, 9, 2, 7], [3, 4, 6, 8]])
    # eos=9: row 0 keeps tokens up to and including the EOS; row 1 has none, all kept
    assert ppo.response_mask(r, eos_id=9, pad_id=0).tolist() == [[1, 1, 0, 0], [1, 1, 1, 1]]


def test_task_scores_reward_gold_prompts_only():
    t = label_template()
    rec = TaskRecord("sentiment", "en", {"text": "Profit rose."}, "positive")
    gold = ppo.Prompt(t.render_messages(rec.inputs, lang="en"), record=rec, template=t)
    free = ppo.Prompt([{"role": "user", "content": "Say hello."}])
    has_gold, value = ppo.task_scores([gold, gold, gold, free], ["positive", "negative", "not a label at all", "positive"])
    assert has_gold.tolist() == [1.0, 1.0, 1.0, 0.0]
    # right label 1, wrong label 0, an answer that breaks the contract 0, no gold 0
    assert value.tolist() == [1.0, 0.0, 0.0, 0.0]
    assert ppo.task_scores([free], ["positive"]) is None
