"""RLHF benchmark on SmolLM2-135M: reward model on held-out HH pairs, then a short PPO-Max run on
bank-task prompts.

    .venv/bin/python bench/rlhf_bench.py --quick            # sized for ~15 min on an idle 2-core CPU
                                                             # (took ~58 min at load average 10+)
    .venv/bin/python bench/rlhf_bench.py --policy runs/demo/sft/model   # start PPO from an SFT model

Part A (reward model, general preferences): Anthropic HH pairs from ``--data``/hh_rlhf, a seeded
split held out by prompt, LoRA reward model, accuracy on the held-out pairs.
Part B (PPO on bank tasks): a bank-task reward model on pairs built from the labelled task data
(wrong label / broken contract as rejected), then PPO-Max from ``--policy`` (default: SmolLM2-Instruct
itself, standing in for the SFT model) on the task templates' prompts. Reported: held-out mean
reward and task score before and after, max KL against ``ppo.kl_stop_bound``.
Results: ``--out``/results.json and a printed table. Numbers depend on the (shared) CPU; the
checks at the end say whether each target was met, they do not assert.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path


def _log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def hh_pairs(data: Path, tok, max_len: int, n_train: int, n_eval: int, seed: int):
    """Held-out split of HH pairs that fit in ``max_len`` tokens (split by prompt, seeded)."""
    from domain_lm.data.preference import load_preferences, split_pairs
    from domain_lm.train.reward import encode_dialogues

    pairs = []
    for name in ("helpful_base", "harmless_base", "helpful_online"):
        f = data / "hh_rlhf" / f"{name}.jsonl"
        if f.is_file():
            pairs += load_preferences(f)
    random.Random(seed).shuffle(pairs)
    kept = []
    for p in pairs:
        lens = encode_dialogues(tok, [p.prompt, p.prompt], [p.chosen, p.rejected], 10**6)["attention_mask"].sum(1)
        if int(lens.max()) <= max_len:
            kept.append(p)
        if len(kept) >= n_train + n_eval:
            break
    train, held = split_pairs(kept, n_eval / max(1, len(kept)), seed)
    return train[:n_train], held[:n_eval], len(pairs)


def part_a(model_path: Path, data: Path, out: Path, quick: bool, seed: int) -> dict:
    from domain_lm.config import build_config
    from domain_lm.models.loading import load_tokenizer
    from domain_lm.train.reward import train_reward_model

    # quick: sized for a shared 2-core CPU (~30 GFLOPS: one 16x160-token forward of SmolLM2 ~20 s),
    # so the reward model sees few pairs; the number shows the pipeline, not a converged model.
    n_train, n_eval, max_len, steps, top = (64, 64, 128, 8, 4) if quick else (3000, 600, 384, 750, None)
    tok = load_tokenizer(model_path)
    train, held, total = hh_pairs(data, tok, max_len, n_train, n_eval, seed)
    _log(f"A: HH pairs: {len(train)} train / {len(held)} held-out (of {total}, <= {max_len} tokens)")
    over = [
        f"reward.train.max_steps={steps}", "reward.train.batch_size=8", f"reward.train.max_seq_len={max_len}", f"reward.train.seed={seed}",
        "reward.train.save_steps=100000", "reward.train.logging_steps=1",
    ]
    over += ["reward.train.learning_rate=5e-4", "reward.peft.top_layers=4"] if top else ["reward.train.learning_rate=2e-4"]
    cfg = build_config({}, over)
    t0 = time.time()
    m = train_reward_model(model_path, train, held, cfg.reward, out / "a_work", out / "a_reward_model").metrics
    return {
        "pairs_train": len(train), "pairs_heldout": len(held), "max_len": max_len, "steps": steps, "lora_top_layers": top,
        "heldout_accuracy": m["accuracy"], "heldout_margin_mean": m["margin_mean"], "train_loss": m["train_loss"],
        "seconds": round(time.time() - t0, 1),
    }


def part_b(
    model_path: Path, policy: Path, out: Path, quick: bool, seed: int,
    reward_model: Path | None = None, ppo_steps: int | None = None, rollout: int | None = None,
) -> dict:
    from domain_lm.config import build_config
    from domain_lm.data import preference
    from domain_lm.train import ppo
    from domain_lm.train.reward import train_reward_model

    tasks = ["sentiment"] if quick else ["sentiment", "business_line"]
    common = [f"tasks.demo_tasks={json.dumps(tasks)}", "tasks.demo_langs=[en]", f"tasks.seed={seed}"]
    rm_steps, rm_eval = (6, 16) if quick else (400, 400)
    ppo_over = (
        [
            "ppo.train.max_steps=4", "ppo.rollout.batch_size=4", "ppo.train.batch_size=2", "ppo.rollout.max_new_tokens=5",
            "ppo.critic_warmup_steps=1",
            "ppo.rollout.eval_prompts=8", "ppo.peft.top_layers=4", "ppo.tricks.ptx_batch_size=2", "ppo.train.learning_rate=3e-4",
            "ppo.critic_learning_rate=3e-4",
        ]
        if quick
        else [
            "ppo.train.max_steps=60", "ppo.rollout.batch_size=16", "ppo.train.batch_size=8", "ppo.rollout.max_new_tokens=16",
            "ppo.critic_warmup_steps=5", "ppo.rollout.eval_prompts=96", "ppo.train.learning_rate=1e-4", "ppo.critic_learning_rate=1e-4",
        ]
    )
    rm_over = ["reward.train.learning_rate=5e-4", "reward.peft.top_layers=4", "reward.train.warmup_ratio=0"]
    if not quick:
        rm_over = ["reward.train.learning_rate=2e-4"]
    if ppo_steps:
        ppo_over.append(f"ppo.train.max_steps={ppo_steps}")
    if rollout:
        ppo_over += [
            f"ppo.rollout.batch_size={rollout}", f"ppo.train.batch_size={max(1, rollout // 2)}", f"ppo.rollout.eval_prompts={2 * rollout}",
        ]
    reward_over = [
        "reward.train.batch_size=8", f"reward.train.max_steps={rm_steps}", "reward.train.max_seq_len=256", "reward.train.save_steps=100000",
        "reward.train.logging_steps=1", "reward.eval_fraction=0.15",
    ]
    sampling = [
        "ppo.rollout.temperature=0.7", "ppo.rollout.top_p=0.9", "ppo.rollout.max_prompt_len=256", "ppo.train.save_steps=5",
        f"ppo.train.seed={seed}", "ppo.kl_coef=0.05",
    ]
    cfg = build_config({}, common + reward_over + rm_over + ppo_over + sampling)
    train_pairs, eval_pairs, counts = preference.build_preference_data(cfg)
    eval_pairs = eval_pairs[:rm_eval]
    _log(f"B: bank-task pairs {counts}: {len(train_pairs)} train / {len(eval_pairs)} held-out")
    t0 = time.time()
    if reward_model is None:
        reward_model = out / "b_reward_model"
        rm = train_reward_model(model_path, train_pairs, eval_pairs, cfg.reward, out / "b_rm_work", reward_model).metrics
    else:  # reuse a trained bank reward model (its held-out accuracy is re-measured here)
        from domain_lm.train.reward import load_reward_model, pair_metrics

        m, t, _ = load_reward_model(reward_model)
        rm = pair_metrics(m, t, eval_pairs)[0]
        del m
    _log(f"B: bank reward model held-out accuracy {rm['accuracy']:.3f} ({time.time() - t0:.0f}s); PPO from {policy}")
    t1 = time.time()
    result = ppo.train_ppo(policy, reward_model, cfg, out / "b_ppo_work")
    rows = result.state.history
    return {
        "reward_model": {
            "pairs": counts, "heldout_pairs": len(eval_pairs), "heldout_accuracy": rm["accuracy"], "steps": rm_steps,
            "path": str(reward_model),
            "seconds": round(t1 - t0, 1),
        },
        "ppo": {
            **result.summary, "kl_stop_bound": cfg.ppo.kl_stop_bound, "seconds": round(time.time() - t1, 1),
            "reward_by_step": [round(r["reward_mean"], 4) for r in rows], "kl_by_step": [round(r["kl"], 4) for r in rows],
        },
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="Small sizes (~15 min on a 2-core CPU).")
    shared = Path(__file__).resolve().parents[1].parent / "shared" / "data"
    ap.add_argument("--data", type=Path, default=shared, help="The shared data folder (hh_rlhf/ inside).")
    ap.add_argument("--model", default="smollm2-135m", help="Registry name or model directory for the reward models.")
    ap.add_argument("--policy", type=Path, default=None, help="PPO start policy (an SFT model dir); default: --model.")
    ap.add_argument("--out", type=Path, default=Path("runs/bench_rlhf"))
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--skip-a", action="store_true", help="Only the PPO part.")
    ap.add_argument("--skip-b", action="store_true", help="Only the HH reward-model part.")
    ap.add_argument("--reward-model", type=Path, default=None, help="Reuse a trained bank-task reward model (skip its training).")
    ap.add_argument("--ppo-steps", type=int, default=None, help="Override the PPO step count.")
    ap.add_argument("--rollout", type=int, default=None, help="Override the PPO rollout batch size.")
    args = ap.parse_args()

    import torch

    from domain_lm.models import registry

    torch.manual_seed(args.seed)
    model_path = Path(args.model) if Path(args.model).is_dir() else registry.resolve(args.model)
    args.out.mkdir(parents=True, exist_ok=True)
    results: dict = {"model": str(model_path), "quick": args.quick, "seed": args.seed, "threads": torch.get_num_threads()}
    t0 = time.time()
    if not args.skip_a:
        results["hh_reward_model"] = part_a(model_path, args.data, args.out, args.quick, args.seed)
        _log(f"A: {results['hh_reward_model']}")
    if not args.skip_b:
        results["bank_ppo"] = part_b(
            model_path, args.policy or model_path, args.out, args.quick, args.seed, args.reward_model, args.ppo_steps, args.rollout
        )
        _log(f"B: {results['bank_ppo']['ppo']}")
    results["seconds"] = round(time.time() - t0, 1)

    checks = {}
    if "bank_ppo" in results:
        p = results["bank_ppo"]["ppo"]
        checks["heldout_reward_rose"] = p.get("heldout_reward_after", 0) > p.get("heldout_reward_before", 0)
        checks["kl_under_bound"] = p["max_kl"] <= p["kl_stop_bound"] and not p["stopped_early"]
        if "heldout_task_score_before" in p:
            checks["task_score_within_1pt"] = p["heldout_task_score_after"] >= p["heldout_task_score_before"] - 0.01
    results["checks"] = checks
    (args.out / "results.json").write_text(json.dumps(results, indent=2, default=str))
    print(json.dumps(results, indent=2, default=str))


if __name__ == "__main__":
    main()
