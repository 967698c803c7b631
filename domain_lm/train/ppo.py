"""RLHF with PPO-Max, written by hand (TRL removed its PPOTrainer): the ``ppo`` stage's trainer.

Zheng et al. 2023, "Secrets of RLHF in Large Language Models Part I: PPO", arXiv:2307.04964.
Every trick is one ``use_*`` switch in ``PpoSection.tricks`` and one ``if`` below, so an ablation
is a config diff. The math lives in ``ppo_core`` (pure functions); this module is the loop:

    rollout -> score -> advantages -> update -> log -> save

Models: actor = upstream (SFT) model + LoRA; reference = the same model with the adapter disabled
(frozen, no second copy); critic = the reward model + LoRA with its score head applied at every
token (a value head), warmed up on the value loss before the actor moves; reward model frozen.
Rollouts use HF ``generate`` on the live actor: its LoRA weights change every step, and pushing
them into a vLLM engine each step costs more than it saves at these sizes (the INFERENCE engine
is used where weights are fixed: sampled preference pairs, evaluation).
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from domain_lm.config import PipelineConfig, PpoSection
from domain_lm.errors import DataError, NotAvailableError
from domain_lm.train import ppo_core as pc

log = logging.getLogger(__name__)

#: Logged every step (JSONL + TensorBoard) and plotted in the stage report.
#: PPO-Max §5.2: reward, KL, response length and perplexity are the signals that show a collapse early.
PLOT_KEYS = [
    "reward_mean", "reward_std", "kl", "response_length", "policy_ppl",
    "policy_clipfrac", "value_clipfrac", "value_error", "entropy", "kl_coef", "task_score",
]


# --------------------------------------------------------------------------- prompts


@dataclass
class Prompt:
    messages: list[dict[str, str]]
    answer: str | None = None  # a demonstration for PPO-ptx
    record: Any = None  # the data.records.TaskRecord it was rendered from (task scores)
    template: Any = None  # the TaskTemplate of ``record``


def _read_prompt_file(path: str) -> list[Prompt]:
    from domain_lm.data.preference import _as_messages

    p = Path(path)
    if not p.is_file():
        raise DataError(
            f"PPO prompt file {p} does not exist (ppo.rollout.prompt_sources). Give JSONL with a 'prompt' (string or messages) per line."
        )
    out = []
    for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), start=1):
        if line.strip():
            row = json.loads(line)
            if "prompt" not in row:
                raise DataError(f"{p}:{n}: no 'prompt' key.")
            out.append(Prompt(_as_messages(row["prompt"]), answer=row.get("answer")))
    return out


def load_prompts(config, rng: random.Random) -> tuple[list[Prompt], list[Prompt]]:
    """(train, held-out) prompts: task records rendered by their templates (same as SFT/serving),
    SFT's own train/eval split, plus any prompt files (split here, seeded)."""
    cfg = config.ppo
    train: list[Prompt] = []
    held: list[Prompt] = []
    if cfg.rollout.from_tasks:
        from domain_lm.data.records import load_split

        split = load_split(config)

        def render(rec) -> Prompt:
            t = split.template(rec)
            msgs = t.render_messages(rec.inputs, lang=rec.lang, variant=rng.randrange(max(1, t.num_variants(rec.lang))))
            return Prompt(msgs, answer=t.target_text(rec.output, lang=rec.lang), record=rec, template=t)

        train += [render(r) for r in split.train]
        held += [render(r) for r in split.held]
    extra = [p for src in cfg.rollout.prompt_sources for p in _read_prompt_file(src)]
    rng.shuffle(extra)
    n_eval = min(cfg.rollout.eval_prompts, len(extra) // 4) if not held else 0
    held += extra[:n_eval]
    train += extra[n_eval:]
    if not train:
        raise DataError("PPO has no prompts: enable ppo.rollout.from_tasks with labelled task data, or set ppo.rollout.prompt_sources.")
    rng.shuffle(held)
    return train, held[: cfg.rollout.eval_prompts]


def encode_prompts(tok, prompts: list[Prompt], max_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded (B, P) prompt ids and mask (generation continues on the right)."""
    ids = [
        list(tok.apply_chat_template(p.messages, add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"])[-max_len:]
        for p in prompts
    ]
    width = max(len(x) for x in ids)
    out = torch.full((len(ids), width), tok.pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(ids), width), dtype=torch.long)
    for i, x in enumerate(ids):
        out[i, width - len(x) :] = torch.tensor(x)
        mask[i, width - len(x) :] = 1
    return out, mask


# --------------------------------------------------------------------------- models


class Critic(nn.Module):
    """Token-level values from a sequence-classification reward model: its score head applied to
    the hidden state at every position (PPO-Max §5.3.3: critic initialised from the reward model)."""

    def __init__(self, seqcls: nn.Module):
        super().__init__()
        self.net = seqcls

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
        inner = self.net.get_base_model() if hasattr(self.net, "get_base_model") else self.net
        backbone = getattr(inner, inner.base_model_prefix)
        h = backbone(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids).last_hidden_state  # (B, L, H)
        return inner.score(h).squeeze(-1).float()  # (B, L)


def build_models(policy_path: Path, reward_path: Path, cfg: PpoSection):
    """actor (LoRA), critic (LoRA + value head), frozen reward model, tokenizer, reward stats."""
    from peft import get_peft_model

    from domain_lm.models.loading import load_causal_lm, load_tokenizer, lora_config
    from domain_lm.train.reward import load_reward_model

    lora, top = cfg.peft.lora, cfg.peft.top_layers
    tok = load_tokenizer(policy_path)
    base = load_causal_lm(policy_path, trainable=True)
    actor = get_peft_model(base, lora_config(lora, task_type="CAUSAL_LM", model=base, top_layers=top))
    critic_base, _, _ = load_reward_model(reward_path, trainable=True)
    critic = Critic(get_peft_model(critic_base, lora_config(lora, task_type="SEQ_CLS", model=critic_base, top_layers=top)))
    reward_model, reward_tok, stats = load_reward_model(reward_path)
    return actor, critic, reward_model, tok, reward_tok, stats


def _resolve_auto(conf: dict[str, Any], lr: float, clip: float | None, micro_batch: int) -> dict[str, Any]:
    """Fill the ``"auto"`` values of a shared DeepSpeed JSON (written for the HF Trainer, which
    resolves them itself) for a hand-written loop. ZeRO-2 only: ZeRO-3 partitions the weights,
    and the rollouts call ``generate`` on the plain module."""
    import torch.distributed as dist

    world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else int(os.environ.get("WORLD_SIZE", "1"))
    if conf.get("zero_optimization", {}).get("stage", 0) >= 3:
        raise NotAvailableError(
            "ppo.train.deepspeed: ZeRO-3 is not supported by the PPO loop (rollouts need whole weights); use deploy/deepspeed/zero2.json."
        )
    values = {
        "train_micro_batch_size_per_gpu": micro_batch,
        "gradient_accumulation_steps": 1,
        "train_batch_size": micro_batch * world,
        "gradient_clipping": clip or 0.0,
        "lr": lr,
        "betas": [0.9, 0.999],
        "eps": 1e-8,
        "weight_decay": 0.0,
        "enabled": bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported()),
    }

    def fill(node: Any) -> Any:
        if isinstance(node, dict):
            return {k: (values[k] if v == "auto" and k in values else fill(v)) for k, v in node.items()}
        return node

    return fill(conf)


class Updater:
    """Optimiser step for one trainable model: plain torch (AdamW), or a DeepSpeed engine when
    ``ppo.deepspeed`` names a config (launch with ``deepspeed``/``accelerate launch``)."""

    def __init__(self, model: nn.Module, lr: float, clip: float | None, deepspeed_config: str | None = None, micro_batch: int = 1):
        params = [p for p in model.parameters() if p.requires_grad]
        self.clip, self.params = clip, params
        self.engine = None
        if deepspeed_config:
            import deepspeed

            conf = _resolve_auto(json.loads(Path(deepspeed_config).read_text()), lr, clip, micro_batch)
            self.engine, self.opt, _, _ = deepspeed.initialize(model=model, model_parameters=params, config=conf)
        else:
            self.opt = torch.optim.AdamW(params, lr=lr)

    def step(self, loss: torch.Tensor) -> float:
        """Backward + (global) gradient clipping + step; returns the pre-clip gradient norm."""
        if self.engine is not None:
            self.engine.backward(loss)
            self.engine.step()
            return float(self.engine.get_global_grad_norm() or 0.0)
        loss.backward()
        # PPO-Max §5.4 (global gradient clipping): one norm over all parameters of the model.
        if self.clip:
            norm = torch.nn.utils.clip_grad_norm_(self.params, self.clip)
        else:
            norm = torch.norm(torch.stack([p.grad.norm() for p in self.params if p.grad is not None]))
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        return float(norm)


def _positions(mask: torch.Tensor) -> torch.Tensor:
    return (mask.cumsum(-1) - 1).clamp(min=0)


def actor_forward(actor, query, qmask, response, rmask, temperature: float, with_entropy: bool = False):
    """logp (B, T) of the response tokens (and entropy (B, T)) under the sampling temperature."""
    ids, mask = torch.cat([query, response], 1), torch.cat([qmask, rmask], 1)
    logits = actor(input_ids=ids, attention_mask=mask, position_ids=_positions(mask)).logits  # (B, P+T, V)
    logits = logits[:, query.size(1) - 1 : -1].float() / temperature  # (B, T, V): predicts response[t]
    logp = pc.logprobs_from_logits(logits, response)
    return logp, (pc.entropy_from_logits(logits) if with_entropy else None)


def critic_forward(critic, query, qmask, response, rmask) -> torch.Tensor:
    """(B, T) values of the states before each response token."""
    ids, mask = torch.cat([query, response], 1), torch.cat([qmask, rmask], 1)
    return critic(ids, mask, _positions(mask))[:, query.size(1) - 1 : -1]


# --------------------------------------------------------------------------- rollout + score


@dataclass
class Experience:
    """One rollout batch. Shapes: query (B, P), response/mask and per-token tensors (B, T)."""

    query: torch.Tensor
    qmask: torch.Tensor
    response: torch.Tensor
    rmask: torch.Tensor
    logp: torch.Tensor
    ref_logp: torch.Tensor
    values: torch.Tensor
    advantages: torch.Tensor
    returns: torch.Tensor
    scores: torch.Tensor  # (B,) raw reward-model scores
    texts: list[str] = field(default_factory=list)


def response_mask(response: torch.Tensor, eos_id: int, pad_id: int) -> torch.Tensor:
    """(B, T) 1 up to and including the first EOS; 0 after it (and on trailing pad)."""
    is_eos = response == eos_id
    after_eos = (is_eos.cumsum(1) - is_eos.long()) > 0
    mask = ~after_eos
    if pad_id != eos_id:
        mask &= response != pad_id
    return mask.long()


@torch.no_grad()
def generate(actor, tok, prompts: list[Prompt], cfg, do_sample: bool = True):
    query, qmask = encode_prompts(tok, prompts, cfg.rollout.max_prompt_len)
    gen_kwargs: dict[str, Any] = {
        "max_new_tokens": cfg.rollout.max_new_tokens, "pad_token_id": tok.pad_token_id, "eos_token_id": tok.eos_token_id,
    }
    if do_sample:
        gen_kwargs.update(do_sample=True, temperature=cfg.rollout.temperature, top_p=cfg.rollout.top_p, top_k=0)
    else:
        gen_kwargs.update(do_sample=False)
    actor.eval()
    seqs = actor.generate(input_ids=query, attention_mask=qmask, **gen_kwargs)
    response = seqs[:, query.size(1) :]
    if response.size(1) == 0:  # every sequence stopped at once: keep one (EOS) token
        response = torch.full((len(prompts), 1), tok.eos_token_id, dtype=torch.long)
    rmask = response_mask(response, tok.eos_token_id, tok.pad_token_id)
    rmask[:, 0] = 1  # at least one token per response, so every sequence has a last token to score
    texts = [tok.decode(r[m.bool()], skip_special_tokens=True) for r, m in zip(response, rmask)]
    return query, qmask, response, rmask, texts


@torch.no_grad()
def reward_scores(reward_model, reward_tok, prompts: list[Prompt], texts: list[str], max_len: int) -> torch.Tensor:
    from domain_lm.train.reward import score

    return score(reward_model, reward_tok, [p.messages for p in prompts], texts, batch_size=len(texts), max_len=max_len)


def task_scores(prompts: list[Prompt], texts: list[str]) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(has_gold, score) per response: the task metric (0..1) of each answer whose prompt was rendered
    from a labelled record (0 where none, or where the answer breaks the contract); None when no
    prompt of the batch has gold."""
    from domain_lm.data.preference import answer_score

    if not any(p.record is not None for p in prompts):
        return None
    gold = torch.tensor([float(p.record is not None) for p in prompts])
    value = torch.tensor(
        [answer_score(p.template, t, p.record.output, p.record.lang) if p.record is not None else 0.0 for p, t in zip(prompts, texts)]
    )
    return gold, value


@torch.no_grad()
def make_experience(state: "PPOState", prompts: list[Prompt]) -> tuple[Experience, dict[str, float]]:
    """Rollout -> score -> KL-shaped token rewards -> advantages (the inputs to one update)."""
    cfg = state.cfg
    # rollout: sample responses from the current policy
    query, qmask, response, rmask, texts = generate(state.actor, state.tok, prompts, cfg)
    mask = rmask.float()
    logp, entropy = actor_forward(state.actor, query, qmask, response, rmask, cfg.rollout.temperature, with_entropy=True)
    with state.actor.disable_adapter():  # reference = the frozen upstream model
        ref_logp, _ = actor_forward(state.actor, query, qmask, response, rmask, cfg.rollout.temperature)
    state.critic.eval()
    values = critic_forward(state.critic, query, qmask, response, rmask) * mask

    # score: the frozen reward model on (prompt, decoded response)
    scores = reward_scores(state.reward_model, state.reward_tok, prompts, texts, cfg.rollout.max_prompt_len + cfg.rollout.max_new_tokens)
    shaped = scores
    if cfg.tricks.use_reward_norm:
        # PPO-Max §5.3.1 (reward normalisation and clipping): standardise with running moments
        # (seeded with the reward model's eval-set statistics), then clip to +-reward_clip.
        state.moments.update(scores)
        shaped = state.moments.normalize(scores, clip=cfg.tricks.reward_clip)

    task = task_scores(prompts, texts)
    if cfg.tricks.use_task_reward and task is not None:
        # Verifiable reward (not in PPO-Max): where a prompt has a gold answer, the task metric of the
        # sampled answer is added on the normalised scale, so a reward model that has seen few bank
        # pairs cannot pull the policy off the labels SFT learned.
        shaped = shaped + cfg.tricks.task_reward_coef * task[1]  # 0 where a prompt has no gold

    # advantages: KL to the reference folded into per-token rewards, then GAE
    kl_tok = pc.kl_estimate(logp, ref_logp, cfg.kl_estimator) * mask
    if cfg.tricks.use_token_kl:
        # PPO-Max §5.3.2 (token-level KL penalty): each token pays kl_coef * KL_t.
        rewards, _ = pc.token_rewards(shaped, logp, ref_logp, mask, state.kl_ctl.value, cfg.kl_estimator)
    else:
        rewards, _ = pc.token_rewards(shaped - state.kl_ctl.value * kl_tok.sum(1), logp, ref_logp, mask, 0.0)
    # GAE (Schulman et al. 2016; PPO-Max §3.2); off: Monte-Carlo returns (lam = 1).
    advantages, returns = pc.gae(rewards, values, mask, cfg.gamma, cfg.lam if cfg.tricks.use_gae else 1.0)
    if cfg.tricks.use_advantage_whitening:
        # PPO-Max §5.3.1 (advantage normalisation): zero mean, unit variance per batch.
        advantages = pc.masked_whiten(advantages, mask)

    seq_kl = kl_tok.sum(1)
    lengths = mask.sum(1)
    metrics = {
        "reward_mean": scores.mean().item(),
        "reward_std": scores.std().item() if len(scores) > 1 else 0.0,
        "reward_norm_mean": shaped.mean().item(),
        "kl": seq_kl.mean().item(),
        "kl_coef": state.kl_ctl.value,
        "response_length": lengths.mean().item(),
        "policy_ppl": torch.exp(-pc.masked_mean(logp, mask)).item(),
        "entropy": pc.masked_mean(entropy, mask).item(),
        "value_mean": pc.masked_mean(values, mask).item(),
        "return_mean": pc.masked_mean(returns, mask).item(),
    }
    if task is not None:
        metrics["task_score"] = (task[1].sum() / task[0].sum()).item()
    exp = Experience(query, qmask, response, rmask, logp, ref_logp, values, advantages, returns, scores, texts)
    return exp, metrics


# --------------------------------------------------------------------------- update


def ptx_loss(actor, tok, demos: list[Prompt], max_len: int) -> torch.Tensor:
    """PPO-ptx (Ouyang et al. 2022; PPO-Max §5.4): the SFT loss on demonstrations, mixed into the
    policy loss so RL does not erode what SFT taught (answer tokens only)."""
    seqs, labels = [], []
    for d in demos:
        prompt_ids = list(tok.apply_chat_template(d.messages, add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"])
        dialogue = d.messages + [{"role": "assistant", "content": d.answer}]
        full = list(tok.apply_chat_template(dialogue, tokenize=True, return_dict=True)["input_ids"])
        cut = max(0, len(full) - max_len)  # drop the oldest context, keep the answer
        full = full[cut:]
        n_prompt = min(max(0, len(prompt_ids) - cut), len(full) - 1)
        seqs.append(full)
        labels.append([-100] * n_prompt + full[n_prompt:])
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), tok.pad_token_id, dtype=torch.long)
    lab = torch.full((len(seqs), width), -100, dtype=torch.long)
    att = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, (s, l) in enumerate(zip(seqs, labels)):
        ids[i, : len(s)], lab[i, : len(l)], att[i, : len(s)] = torch.tensor(s), torch.tensor(l), 1
    return actor(input_ids=ids, attention_mask=att, labels=lab).loss


def ppo_update(state: "PPOState", buffer: list[Experience], update_actor: bool) -> dict[str, float]:
    """``ppo_epochs`` passes over the experience buffer in shuffled mini-batches."""
    cfg = state.cfg
    sums: dict[str, list[float]] = {}
    # Dropout stays off (eval mode; gradients still flow) so the first pass reproduces the
    # rollout's log-probs exactly and the ratio starts at 1.
    state.actor.eval()
    state.critic.eval()
    for _ in range(cfg.ppo_epochs):
        for exp in buffer:
            order = torch.randperm(exp.response.size(0), generator=state.torch_rng)
            for start in range(0, len(order), cfg.train.batch_size):
                i = order[start : start + cfg.train.batch_size]
                q, qm, r, rm = exp.query[i], exp.qmask[i], exp.response[i], exp.rmask[i]
                mask = rm.float()
                # critic: clipped value loss (PPO-Max §5.4) or plain MSE
                values = critic_forward(state.critic, q, qm, r, rm)
                tricks = cfg.tricks
                vloss, vm = pc.value_loss(values, exp.values[i], exp.returns[i], mask, tricks.value_clip_range, tricks.use_value_clip)
                vm["critic_grad_norm"] = state.critic_opt.step(vloss)
                for k, v in vm.items():
                    sums.setdefault(k, []).append(v)
                if not update_actor:
                    continue
                # actor: clipped surrogate (+ entropy bonus) (+ PPO-ptx)
                logp, entropy = actor_forward(state.actor, q, qm, r, rm, cfg.rollout.temperature, with_entropy=cfg.tricks.entropy_coef > 0)
                loss, pm = pc.policy_loss(logp, exp.logp[i], exp.advantages[i], mask, cfg.tricks.clip_range, cfg.tricks.use_policy_clip)
                if cfg.tricks.entropy_coef > 0:
                    loss = loss - cfg.tricks.entropy_coef * pc.masked_mean(entropy, mask)
                if cfg.tricks.use_ptx and state.demos:
                    demos = state.rng.sample(state.demos, min(cfg.tricks.ptx_batch_size, len(state.demos)))
                    lm = ptx_loss(state.actor, state.tok, demos, cfg.rollout.max_prompt_len + cfg.rollout.max_new_tokens)
                    loss = loss + cfg.tricks.ptx_coef * lm
                    pm["ptx_loss"] = lm.item()
                pm["actor_grad_norm"] = state.actor_opt.step(loss)
                for k, v in pm.items():
                    sums.setdefault(k, []).append(v)
    return {k: sum(v) / len(v) for k, v in sums.items()}


# --------------------------------------------------------------------------- state, checkpoints


@dataclass
class PPOState:
    cfg: Any
    actor: Any
    critic: Critic
    reward_model: Any
    tok: Any
    reward_tok: Any
    actor_opt: Updater
    critic_opt: Updater
    moments: pc.RunningMoments
    kl_ctl: pc.KLController
    rng: random.Random
    torch_rng: torch.Generator
    demos: list[Prompt]
    step: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)


def save_checkpoint(state: PPOState, work_dir: Path) -> Path:
    ckpt = work_dir / f"checkpoint-{state.step}"
    tmp = work_dir / f".tmp-checkpoint-{state.step}"
    shutil.rmtree(tmp, ignore_errors=True)
    state.actor.save_pretrained(tmp / "actor")
    state.critic.net.save_pretrained(tmp / "critic")
    optim = {
        "actor_opt": state.actor_opt.opt.state_dict(),
        "critic_opt": state.critic_opt.opt.state_dict(),
        "torch_rng": state.torch_rng.get_state(),
        "global_torch_rng": torch.get_rng_state(),
    }
    torch.save(optim, tmp / "optim.pt")
    meta = {
        "step": state.step,
        "moments": state.moments.state_dict(),
        "kl_ctl": state.kl_ctl.state_dict(),
        "rng": state.rng.getstate(),
        "history": state.history,
    }
    (tmp / "state.json").write_text(json.dumps(meta, default=list))
    shutil.rmtree(ckpt, ignore_errors=True)
    tmp.rename(ckpt)  # a checkpoint directory exists only once it is complete
    for old in sorted(work_dir.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))[:-2]:
        shutil.rmtree(old, ignore_errors=True)
    return ckpt


def last_ppo_checkpoint(work_dir: Path) -> Path | None:
    cks = [p for p in work_dir.glob("checkpoint-*") if (p / "state.json").is_file()]
    return max(cks, key=lambda p: int(p.name.split("-")[1])) if cks else None


def load_checkpoint(state: PPOState, ckpt: Path) -> None:
    from peft import set_peft_model_state_dict
    from peft.utils import load_peft_weights

    set_peft_model_state_dict(state.actor, load_peft_weights(str(ckpt / "actor")))
    set_peft_model_state_dict(state.critic.net, load_peft_weights(str(ckpt / "critic")))
    opt = torch.load(ckpt / "optim.pt", weights_only=False)
    state.actor_opt.opt.load_state_dict(opt["actor_opt"])
    state.critic_opt.opt.load_state_dict(opt["critic_opt"])
    state.torch_rng.set_state(opt["torch_rng"])
    torch.set_rng_state(opt["global_torch_rng"])
    meta = json.loads((ckpt / "state.json").read_text())
    state.step, state.history = meta["step"], meta["history"]
    state.moments.load_state_dict(meta["moments"])
    state.kl_ctl.load_state_dict(meta["kl_ctl"])
    state.rng.setstate((meta["rng"][0], tuple(meta["rng"][1]), meta["rng"][2]))


# --------------------------------------------------------------------------- evaluation


@torch.no_grad()
def evaluate(state: PPOState, prompts: list[Prompt], batch_size: int = 8, use_adapter: bool = True) -> dict[str, float]:
    """Greedy answers on held-out prompts: mean reward, and the task metric where a record has gold."""
    if not prompts:
        return {}
    rewards: list[float] = []
    gold, scored = 0.0, 0.0
    for i in range(0, len(prompts), batch_size):
        chunk = prompts[i : i + batch_size]
        if use_adapter:
            texts = generate(state.actor, state.tok, chunk, state.cfg, do_sample=False)[-1]
        else:
            with state.actor.disable_adapter():
                texts = generate(state.actor, state.tok, chunk, state.cfg, do_sample=False)[-1]
        max_len = state.cfg.rollout.max_prompt_len + state.cfg.rollout.max_new_tokens
        rewards += reward_scores(state.reward_model, state.reward_tok, chunk, texts, max_len).tolist()
        task = task_scores(chunk, texts)
        if task is not None:
            gold, scored = gold + task[0].sum().item(), scored + task[1].sum().item()
    out = {"reward": sum(rewards) / len(rewards)}
    if gold:
        out["task_score"] = scored / gold
    return out


# --------------------------------------------------------------------------- the loop


@dataclass
class PpoTrainResult:
    """The final PPO state (actor with its adapter, tokenizer, history) and the summary metrics."""

    state: PPOState
    summary: dict[str, Any]


def train_ppo(
    policy_path: Path, reward_path: Path, config: PipelineConfig, work_dir: Path, resume: bool = False, tb_dir: Path | None = None
) -> PpoTrainResult:
    """Run PPO-Max; logs and checkpoints go to ``work_dir``."""
    cfg = config.ppo
    work_dir.mkdir(parents=True, exist_ok=True)
    # Under DeepSpeed every rank runs this loop on its own rollouts (data parallel): the prompt
    # split is shared, the sampling seed differs per rank; rank 0 alone logs and checkpoints.
    rank = int(os.environ.get("RANK", "0"))
    main = rank == 0
    torch.manual_seed(cfg.train.seed + rank)
    train_prompts, held_prompts = load_prompts(config, random.Random(cfg.train.seed))
    rng = random.Random(cfg.train.seed + 7919 * rank)
    actor, critic, reward_model, tok, reward_tok, stats = build_models(policy_path, reward_path, cfg)
    # PPO-Max §5.4 (global gradient clipping), for actor and critic alike.
    clip = cfg.train.max_grad_norm if cfg.tricks.use_grad_clip else None
    moments = pc.RunningMoments()
    if stats.get("std"):
        # Seed the running moments with the reward model's held-out statistics (mean/std).
        moments.mean, moments.var, moments.count = float(stats["mean"]), float(stats["std"]) ** 2, float(stats.get("n", 1))
    state = PPOState(
        cfg=cfg,
        actor=actor,
        critic=critic,
        reward_model=reward_model,
        tok=tok,
        reward_tok=reward_tok,
        actor_opt=Updater(actor, cfg.train.learning_rate, clip, cfg.train.deepspeed, cfg.train.batch_size),
        critic_opt=Updater(critic, cfg.critic_learning_rate, clip, cfg.train.deepspeed, cfg.train.batch_size),
        moments=moments,
        # PPO-Max §5.3.2: KL coefficient fixed, or adaptive towards target_kl (Ziegler et al. 2019).
        kl_ctl=pc.KLController(cfg.kl_coef, adaptive=cfg.tricks.adaptive_kl, target=cfg.tricks.target_kl, horizon=cfg.tricks.kl_horizon),
        rng=rng,
        torch_rng=torch.Generator().manual_seed(cfg.train.seed + rank),
        demos=[p for p in train_prompts if p.answer] if cfg.tricks.use_ptx else [],
    )
    summary: dict[str, Any] = {"train_prompts": len(train_prompts), "heldout_prompts": len(held_prompts)}
    ckpt = last_ppo_checkpoint(work_dir) if resume else None
    if ckpt is not None:
        load_checkpoint(state, ckpt)
        summary["resumed_from_step"] = state.step
    before_path = work_dir / "eval_before.json"
    if before_path.is_file():
        before = json.loads(before_path.read_text())
    else:
        before = evaluate(state, held_prompts, use_adapter=False)
        if main:
            before_path.write_text(json.dumps(before))

    tb = None
    if tb_dir is not None and main:
        from torch.utils.tensorboard import SummaryWriter

        tb = SummaryWriter(str(tb_dir))
    log_path = work_dir / "ppo_log.jsonl"
    buffer: list[Experience] = []
    stopped_early = False
    order = list(range(len(train_prompts)))
    while state.step < cfg.train.max_steps:
        t0 = time.time()
        # rollout + score + advantages
        batch = [train_prompts[state.rng.choice(order)] for _ in range(cfg.rollout.batch_size)]
        exp, metrics = make_experience(state, batch)
        # PPO-Max §5.4 (small experience buffer): reuse the last `buffer_size` rollouts.
        buffer = (buffer + [exp])[-cfg.rollout.buffer_size :]
        # update: the critic alone during warm-up (PPO-Max §5.3.3), then actor and critic
        warm = state.step < cfg.critic_warmup_steps
        metrics.update(ppo_update(state, buffer, update_actor=not warm))
        state.kl_ctl.update(metrics["kl"], cfg.rollout.batch_size)
        state.step += 1
        # log
        metrics.update(step=state.step, critic_warmup=warm, seconds=round(time.time() - t0, 2), sample=exp.texts[0][:200])
        state.history.append(metrics)
        if main:
            with log_path.open("a", encoding="utf-8") as f:
                f.write(json.dumps(metrics, ensure_ascii=False) + "\n")
        if tb is not None:
            for k, v in metrics.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool):
                    tb.add_scalar(f"ppo/{k}", v, state.step)
        log.info("ppo step %d: reward %.3f kl %.4f len %.1f", state.step, metrics["reward_mean"], metrics["kl"], metrics["response_length"])
        # save
        if main and (state.step % cfg.train.save_steps == 0 or state.step == cfg.train.max_steps):
            save_checkpoint(state, work_dir)
        # early stop: the policy has drifted too far from the reference
        if metrics["kl"] > cfg.kl_stop_bound:
            log.warning("ppo: KL %.3f exceeded kl_stop_bound %.3f at step %d; stopping", metrics["kl"], cfg.kl_stop_bound, state.step)
            stopped_early = True
            if main:
                save_checkpoint(state, work_dir)
            break
    if tb is not None:
        tb.close()
    after = evaluate(state, held_prompts, use_adapter=True)
    summary.update({"steps_done": state.step, "stopped_early": stopped_early, "max_kl": max((h["kl"] for h in state.history), default=0.0)})
    summary.update({f"heldout_{k}_before": v for k, v in before.items()})
    summary.update({f"heldout_{k}_after": v for k, v in after.items()})
    if state.history:
        last = state.history[-1]
        summary.update({f"last_{k}": last[k] for k in PLOT_KEYS if k in last})
    return PpoTrainResult(state, summary)
