"""Pipeline stage ``pretrain``: continued causal-LM pretraining on the packed domain corpus.

Reads top to bottom: tokenizer -> data (domain blocks + replay blocks) -> model (LoRA or full)
-> perplexity before -> Trainer (checkpoints in the work dir, --resume) -> save + merge ->
perplexity after -> curves, report, model card.

Replay against forgetting (continual-pretraining practice, e.g. Ibrahim et al. 2024,
arXiv:2403.08763): ``replay_fraction`` of the training blocks are general text, from the
corpus stage's general sources or, when none, text sampled from the base model before training.

Distributed: the same code runs under ``deepspeed``/``torchrun``; rank 0 goes through the run
store (``run``), the other ranks call ``run_worker`` and only take part in training.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import time
from pathlib import Path
from typing import Any

import torch

from domain_lm import atomic
from domain_lm.config import PipelineConfig, PretrainSection
from domain_lm.runstore import StageResult

SECTIONS = ["pretrain", "base_model"]
NEEDS = ["base", "corpus"]

REPLAY_FILE = "replay_samples.jsonl"
BEFORE_FILE = "perplexity_before.json"


class SimulatedKill(RuntimeError):
    """Raised by the test hook ``extra['stop_after_step']`` right after a checkpoint is saved."""


def data_hashes(config: PipelineConfig) -> dict[str, str]:
    return {}  # every input comes from the base and corpus stages (their fingerprints cover it)


def world_rank() -> tuple[int, int]:
    """(rank, world size) from the launcher's environment (deepspeed and torchrun both set these)."""
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


# --------------------------------------------------------------------------- data


class BlockDataset(torch.utils.data.Dataset):
    def __init__(self, blocks: list[list[int]]):
        self.blocks = [torch.tensor(b, dtype=torch.long) for b in blocks]

    def __len__(self) -> int:
        return len(self.blocks)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.blocks[i]}


def collate_blocks(batch: list[dict[str, torch.Tensor]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad to the longest block; padded positions get attention 0 and label -100."""
    n = max(len(b["input_ids"]) for b in batch)
    ids = torch.full((len(batch), n), pad_id, dtype=torch.long)  # (B, T)
    mask = torch.zeros((len(batch), n), dtype=torch.long)
    for i, b in enumerate(batch):
        ids[i, : len(b["input_ids"])] = b["input_ids"]
        mask[i, : len(b["input_ids"])] = 1
    labels = ids.masked_fill(mask == 0, -100)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def pack_texts(texts: list[str], tokenizer, block_size: int) -> list[list[int]]:
    from domain_lm.data.corpus import Packer

    packer = Packer(block_size, tokenizer.eos_token_id)
    blocks: list[list[int]] = []
    for t in texts:
        blocks.extend(packer.add_document(tokenizer(t, add_special_tokens=False)["input_ids"]))
    return blocks + packer.flush()


def mix_replay(domain: list[list[int]], general: list[list[int]], fraction: float, seed: int) -> list[list[int]]:
    """Domain blocks plus general blocks so that general ones are ``fraction`` of the result
    (sampled with replacement when there are too few). Order is left to the Trainer's seeded sampler."""
    if fraction <= 0 or not general or not domain:
        return list(domain)
    n_general = round(fraction / (1 - fraction) * len(domain))
    rng = random.Random(seed)
    picked = rng.sample(general, n_general) if n_general <= len(general) else [rng.choice(general) for _ in range(n_general)]
    return list(domain) + picked


@torch.no_grad()
def sample_general_texts(model, tokenizer, n: int, max_new_tokens: int, seed: int, batch_size: int = 8) -> list[str]:
    """General text sampled from the base model itself (open-ended prompts, no finance)."""
    from domain_lm.data.demo_corpus import general_prompts

    prompts = general_prompts()
    prompts = [prompts[i % len(prompts)] for i in range(n)]
    torch.manual_seed(seed)
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"  # decoder-only generation continues from the right edge
    out: list[str] = []
    try:
        for i in range(0, n, batch_size):
            enc = tokenizer(prompts[i : i + batch_size], return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
            gen = model.generate(
                **enc, do_sample=True, temperature=0.8, top_p=0.95, max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id
            )
            for p, g in zip(prompts[i : i + batch_size], gen[:, enc["input_ids"].shape[1] :]):
                out.append(p + " " + tokenizer.decode(g, skip_special_tokens=True).strip())
    finally:
        tokenizer.padding_side = side
    return out


@torch.no_grad()
def perplexity(model, blocks: list[list[int]], pad_id: int, batch_size: int = 4) -> float:
    """exp(mean token NLL) over ``blocks`` (tokens weighted equally; padding ignored)."""
    if not blocks:
        return float("nan")
    was_training = model.training
    model.eval()
    nll, count = 0.0, 0
    dev = next(model.parameters()).device
    for i in range(0, len(blocks), batch_size):
        batch = collate_blocks([{"input_ids": torch.tensor(b)} for b in blocks[i : i + batch_size]], pad_id)
        batch = {k: v.to(dev) for k, v in batch.items()}
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]  # (B, T-1, V)
        target = batch["labels"][:, 1:]  # (B, T-1)
        loss = torch.nn.functional.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), target.reshape(-1), ignore_index=-100, reduction="sum")
        nll += loss.item()
        count += int((target != -100).sum())
    if was_training:
        model.train()
    return float(torch.exp(torch.tensor(nll / max(count, 1))))


def prepare_data(section: PretrainSection, corpus_dir: Path, base_model, tokenizer, work_dir: Path, block_size: int) -> dict[str, Any]:
    """Domain train/held-out blocks and general (replay) train/held-out blocks.

    Base-model samples are cached in the work dir so a resumed run trains on the very same data."""
    from domain_lm.data.corpus import read_blocks

    domain_train = read_blocks(corpus_dir, "domain", "train")
    domain_held = read_blocks(corpus_dir, "domain", "heldout", limit=section.eval_max_blocks)
    general_train = read_blocks(corpus_dir, "general", "train")
    general_held = read_blocks(corpus_dir, "general", "heldout", limit=section.eval_max_blocks)
    general_source = "corpus.general_sources"
    if not general_train and section.replay_samples > 0:
        general_source = "sampled from the base model"
        cache = work_dir / REPLAY_FILE
        if cache.is_file():
            texts = [json.loads(line)["text"] for line in cache.read_text(encoding="utf-8").splitlines() if line.strip()]
        else:
            texts = sample_general_texts(base_model, tokenizer, section.replay_samples, section.replay_max_new_tokens, section.train.seed)
            atomic.write_text(cache, "".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in texts))
        # Held out by sample (a quarter, at least one) so general perplexity is not measured on training text.
        n_held = max(1, len(texts) // 4) if len(texts) > 1 else 0
        general_held = pack_texts(texts[:n_held], tokenizer, block_size)[: section.eval_max_blocks]
        general_train = pack_texts(texts[n_held:], tokenizer, block_size)
    train = mix_replay(domain_train, general_train, section.replay_fraction, section.train.seed)
    return {
        "train": train,
        "domain_heldout": domain_held,
        "general_heldout": general_held,
        "n_domain": len(domain_train),
        "n_replay": len(train) - len(domain_train),
        "general_source": general_source if general_train else "none",
    }


# --------------------------------------------------------------------------- model and trainer


def build_model(section: PretrainSection, base_path: Path):
    """The trainable model: LoRA on the base (optionally embeddings + LM head too) or the full base."""
    from transformers import set_seed

    from domain_lm.models.loading import load_causal_lm, lora_config

    set_seed(section.train.seed)  # LoRA init is random: same seed -> same start
    model = load_causal_lm(base_path, dtype=torch.float32, trainable=True)
    if section.method == "full":
        return model
    from peft import get_peft_model

    modules_to_save = ["embed_tokens", "lm_head"] if section.train_embeddings else None
    conf = lora_config(section.lora, modules_to_save=modules_to_save, model=model, top_layers=section.lora_top_layers)
    return get_peft_model(model, conf)


def _trainer_class():
    from transformers import Trainer

    class PretrainTrainer(Trainer):
        """Trainer that also logs tokens/s (real tokens, all ranks) with every loss."""

        def training_step(self, model, inputs, *args, **kwargs):
            self._tok_count = getattr(self, "_tok_count", 0) + int(inputs["attention_mask"].sum()) * self.args.world_size
            return super().training_step(model, inputs, *args, **kwargs)

        def log(self, logs: dict[str, float], *args, **kwargs) -> None:
            if "loss" in logs:
                now = time.perf_counter()
                t0 = getattr(self, "_tok_t0", None)
                if t0 is not None and now > t0:
                    logs["tokens_per_s"] = round(getattr(self, "_tok_count", 0) / (now - t0), 1)
                self._tok_t0, self._tok_count = now, 0
            super().log(logs, *args, **kwargs)

        def _inner_training_loop(self, *args, **kwargs):
            self._tok_t0, self._tok_count = time.perf_counter(), 0
            return super()._inner_training_loop(*args, **kwargs)

    return PretrainTrainer


def _kill_callback(step: int):
    from transformers import TrainerCallback

    class _Kill(TrainerCallback):
        def on_save(self, args, state, control, **kw):
            if state.global_step >= step:
                raise SimulatedKill(f"simulated kill after checkpoint {state.global_step}")

    return _Kill()


def train(section: PretrainSection, base_path: Path, corpus_dir: Path, work_dir: Path, block_size: int, resume: bool, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Train on every rank; returns data info, perplexity before (rank 0) and the trainer."""
    from domain_lm.models.loading import load_tokenizer
    from domain_lm.train.common import last_checkpoint, make_progress_callback, quiet_trainer, training_arguments

    extra = extra or {}
    rank, _ = world_rank()
    tokenizer = load_tokenizer(base_path)
    model = build_model(section, base_path)
    data = prepare_data(section, corpus_dir, model, tokenizer, work_dir, block_size)
    if not data["train"]:
        from domain_lm.errors import DataError

        raise DataError(f"The corpus at {corpus_dir} has no training blocks. Add documents to corpus.sources or lower corpus.min_chars.")

    # Perplexity before training (LoRA starts as the identity, so this is the base model).
    before: dict[str, float] = {}
    if rank == 0:
        before_file = work_dir / BEFORE_FILE
        if before_file.is_file():
            before = json.loads(before_file.read_text())
        else:
            before = {
                "ppl_domain_before": perplexity(model, data["domain_heldout"], tokenizer.pad_token_id),
                "ppl_general_before": perplexity(model, data["general_heldout"], tokenizer.pad_token_id),
            }
            atomic.write_json(before_file, before)

    out_dir = work_dir / "trainer"
    args = training_arguments(section.train, out_dir)
    callbacks = [make_progress_callback("pretrain", work_dir / "progress.jsonl")]
    if extra.get("stop_after_step"):
        callbacks.append(_kill_callback(int(extra["stop_after_step"])))
    trainer = _trainer_class()(
        model=model,
        args=args,
        train_dataset=BlockDataset(data["train"]),
        data_collator=lambda b: collate_blocks(b, tokenizer.pad_token_id),
        callbacks=callbacks,
    )
    ckpt = last_checkpoint(out_dir) if resume else None
    t0 = time.time()
    quiet_trainer(trainer).train(resume_from_checkpoint=ckpt)
    train_s = time.time() - t0
    # Collective under DeepSpeed (ZeRO-3 gathers the weights); only the main process writes.
    final = work_dir / "final"
    trainer.save_model(str(final))
    return {"data": data, "before": before, "trainer": trainer, "tokenizer": tokenizer, "final": final, "resumed_from": ckpt, "train_s": train_s}


# --------------------------------------------------------------------------- stage


def _history_metrics(history: list[dict[str, Any]]) -> dict[str, float]:
    losses = [h["loss"] for h in history if "loss" in h]
    tps = [h["tokens_per_s"] for h in history if "tokens_per_s" in h]
    out: dict[str, float] = {}
    if losses:
        out["loss_first"] = float(losses[0])
        out["loss_last"] = float(losses[-1])
    if tps:
        out["tokens_per_s"] = float(sum(tps) / len(tps))
    final = [h for h in history if "train_loss" in h]
    if final:
        out["train_loss"] = float(final[-1]["train_loss"])
    return out


def _write_report(out: Path, metrics: dict[str, Any], info: dict[str, Any]) -> None:
    lines = ["# Continued pretraining", "", f"Method: {info['method']}; replay from {info['general_source']}.", "", "| metric | value |", "|---|---|"]
    for k, v in metrics.items():
        lines.append(f"| {k} | {v:.4g} |" if isinstance(v, float) else f"| {k} | {v} |")
    lines += ["", "![training curves](curves.png)", ""]
    atomic.write_text(out / "report.md", "\n".join(lines))


def run(ctx) -> StageResult:
    from domain_lm.models.loading import load_causal_lm, merge_adapter
    from domain_lm.train.common import plot_curves

    section: PretrainSection = ctx.config.pretrain
    res = ctx.writer.result
    base_result, base_path = ctx.input_model("base")
    corpus = ctx.inputs.get("corpus")
    if corpus is None:
        from domain_lm.errors import DomainLMError

        raise DomainLMError("Stage pretrain needs the corpus stage. Run `domain-lm corpus build` first (or `domain-lm pipeline run`).")
    if not section.enabled:
        # Disabled: hand the base model through unchanged so later stages still find a `model`.
        res.artefacts["model"] = str(base_path)
        res.metrics["skipped"] = True
        return res
    corpus_dir = corpus.path
    block_size = ctx.config.corpus.block_size

    t = train(section, base_path, corpus_dir, ctx.work_dir, block_size, ctx.resume, ctx.extra)
    out = ctx.out
    tokenizer = t["tokenizer"]
    if section.method == "lora":
        shutil.copytree(t["final"], out / "adapter")
        merge_adapter(out / "adapter", out / "model")
        ctx.writer.add_artefact("adapter", "adapter")
    else:
        shutil.copytree(t["final"], out / "model")
        tokenizer.save_pretrained(out / "model")
    ctx.writer.add_artefact("model", "model")

    # Perplexity after, on the saved merged weights (what later stages will load).
    merged = load_causal_lm(out / "model", dtype=torch.float32)
    data = t["data"]
    after = {
        "ppl_domain_after": perplexity(merged, data["domain_heldout"], tokenizer.pad_token_id),
        "ppl_general_after": perplexity(merged, data["general_heldout"], tokenizer.pad_token_id),
    }
    history = t["trainer"].state.log_history
    atomic.write_text(out / "train_log.jsonl", "".join(json.dumps(h) + "\n" for h in history))
    ctx.writer.add_artefact("train_log", "train_log.jsonl")
    tb = Path(getattr(t["trainer"].args, "logging_dir", None) or Path(t["trainer"].args.output_dir) / "runs")
    if tb.is_dir():
        shutil.copytree(tb, out / "tensorboard")
        ctx.writer.add_artefact("tensorboard", "tensorboard")
    if plot_curves(history, ["loss", "learning_rate", "tokens_per_s"], out / "curves.png", title="pretrain"):
        ctx.writer.add_artefact("curves", "curves.png")

    m = res.metrics
    m.update(t["before"])
    m.update(after)
    for kind in ("domain", "general"):
        b, a = m.get(f"ppl_{kind}_before"), m.get(f"ppl_{kind}_after")
        if b and a and b == b and a == a:  # not NaN
            m[f"ppl_{kind}_change_pct"] = round(100.0 * (a - b) / b, 2)
    m.update(_history_metrics(history))
    m.update(
        {
            "steps": t["trainer"].state.global_step,
            "blocks_domain": data["n_domain"],
            "blocks_replay": data["n_replay"],
            "trainable_params": sum(p.numel() for p in t["trainer"].model.parameters() if p.requires_grad),
            "train_seconds": round(t["train_s"], 1),
            "resumed": t["resumed_from"] is not None,
        }
    )
    info = {"method": section.method + (" + embeddings/LM head" if section.method == "lora" and section.train_embeddings else ""), "general_source": data["general_source"]}
    _write_report(out, {k: v for k, v in m.items() if isinstance(v, (int, float, bool))}, info)
    ctx.writer.add_artefact("report", "report.md")
    res.inputs["corpus"] = corpus.fingerprint
    ctx.writer.model_card = {
        "title": "domain continued pretraining",
        "base_model": str(base_path),
        "method": info["method"],
        "description": "Continued causal-LM pretraining on the bank-domain corpus, with replay of general text against forgetting. "
        "Perplexity is measured on held-out domain documents and held-out general text, before and after training.",
        "data_notes": [
            f"domain training blocks: {data['n_domain']} x {block_size} tokens; replay blocks: {data['n_replay']} ({data['general_source']})",
            f"held-out perplexity blocks: domain {len(data['domain_heldout'])}, general {len(data['general_heldout'])}",
        ],
    }
    return res


def run_worker(config: PipelineConfig, resume: bool = False) -> None:
    """A non-zero rank of a distributed run: join the training, write nothing of the stage."""
    from domain_lm.runstore import Run

    run_ = Run.from_config(config)
    base, corpus = run_.load("base"), run_.load("corpus")
    if base is None or corpus is None:
        from domain_lm.errors import DomainLMError

        raise DomainLMError("Distributed pretrain needs the base and corpus stages of this run to be complete; run them first (single process).")
    train(config.pretrain, base.artefact("model"), corpus.path, run_.work_dir("pretrain"), config.corpus.block_size, resume)
