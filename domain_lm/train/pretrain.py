"""Continued causal-LM pretraining on the packed domain corpus (the ``pretrain`` stage's trainer).

Reads top to bottom: tokenizer -> data (domain blocks + replay blocks) -> model (LoRA or full)
-> perplexity before -> Trainer (checkpoints in the work dir, --resume) -> the trained weights
saved for the stage (``PretrainResult``).

Replay against forgetting (continual-pretraining practice, e.g. Ibrahim et al. 2024,
arXiv:2403.08763): ``replay_fraction`` of the training blocks are general text, from the
corpus stage's general replay blocks or, when none, text sampled from the base model before
training. General perplexity is measured on the corpus stage's held-out general blocks (text
that is never replayed), else on held-out base-model samples.

Distributed: the same code runs under ``deepspeed``/``torchrun``; every rank calls ``train``
(rank 0 through the run store, see ``domain_lm.stages.pretrain``).
"""

from __future__ import annotations

import json
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

from domain_lm.config import PretrainSection
from domain_lm.core import atomic
from domain_lm.errors import DataError

REPLAY_FILE = "replay_samples.jsonl"
BEFORE_FILE = "perplexity_before.json"

#: Openings for sampling general (non-finance) text from the base model, used for replay.
GENERAL_PROMPTS = (
    "The history of the printing press",
    "Photosynthesis is the process by which",
    "My favourite recipe for a simple vegetable soup",
    "The rules of football are",
    "Once upon a time, in a small village,",
    "The water cycle describes",
    "Learning a new language takes",
    "The solar system consists of",
    "A good night's sleep",
    "The city of Rome was founded",
    "To plant tomatoes in a garden,",
    "Mountains are formed when",
    "The invention of the telephone",
    "Cats and dogs differ in",
    "Music has been part of human culture",
    "How to write a clear email:",
)


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
    prompts = [GENERAL_PROMPTS[i % len(GENERAL_PROMPTS)] for i in range(n)]
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
        flat = logits.float().reshape(-1, logits.shape[-1])  # (B*(T-1), V)
        loss = torch.nn.functional.cross_entropy(flat, target.reshape(-1), ignore_index=-100, reduction="sum")
        nll += loss.item()
        count += int((target != -100).sum())
    if was_training:
        model.train()
    return float(torch.exp(torch.tensor(nll / max(count, 1))))


@dataclass
class PretrainData:
    """Token blocks for one pretraining run (each block a list of token ids)."""

    train: list[list[int]]  # domain blocks + replay blocks
    domain_heldout: list[list[int]]
    general_heldout: list[list[int]]
    n_domain: int
    n_replay: int
    general_source: str  # where the replay text came from
    general_heldout_source: str = "none"  # what general perplexity is measured on
    domain_heldout_source: str = "held-out domain documents"


def evenly_spaced(blocks: list[list[int]], n: int) -> list[list[int]]:
    """``n`` blocks spread evenly over ``blocks`` (all when there are fewer), so a perplexity
    measurement covers every held-out document kind rather than the first few documents."""
    if len(blocks) <= n:
        return list(blocks)
    return [blocks[(i * len(blocks)) // n] for i in range(n)]


def _base_samples(section: PretrainSection, base_model, tokenizer, work_dir: Path) -> list[str]:
    """Texts sampled from the base model, cached in the work dir so a resumed run trains on the very same data."""
    cache = work_dir / REPLAY_FILE
    if cache.is_file():
        return [json.loads(line)["text"] for line in cache.read_text(encoding="utf-8").splitlines() if line.strip()]
    texts = sample_general_texts(base_model, tokenizer, section.replay_samples, section.replay_max_new_tokens, section.train.seed)
    atomic.write_text(cache, "".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in texts))
    return texts


def _labels(corpus_dir: Path) -> dict[str, str]:
    """Where the corpus stage's text came from (its ``sources.json``; older corpora have none)."""
    path = corpus_dir / "sources.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def prepare_data(section: PretrainSection, corpus_dir: Path, base_model, tokenizer, work_dir: Path, block_size: int) -> PretrainData:
    """Domain train/held-out blocks, replay blocks and the general blocks perplexity is measured on.

    Replay is the corpus's general replay blocks, else base-model samples; general perplexity is
    measured on the corpus's held-out general blocks (never replayed), else on a quarter of the
    samples held back from replay."""
    from domain_lm.data.corpus import read_blocks

    labels = _labels(corpus_dir)
    domain_train = read_blocks(corpus_dir, "domain", "train")
    domain_held = evenly_spaced(read_blocks(corpus_dir, "domain", "heldout"), section.eval_max_blocks)
    general_train = read_blocks(corpus_dir, "general", "train")
    general_held = evenly_spaced(read_blocks(corpus_dir, "general", "heldout"), section.eval_max_blocks)
    replay_source = labels.get("general_replay", "corpus.general_sources")
    held_source = labels.get("general_heldout", "held-out general corpus documents")
    if not general_train and section.replay_samples > 0 and (section.replay_fraction > 0 or not general_held):
        replay_source = "text sampled from the base model"
        texts = _base_samples(section, base_model, tokenizer, work_dir)
        if not general_held:
            # Held out by sample (a quarter, at least one) so general perplexity is not measured on training text.
            n_held = max(1, len(texts) // 4) if len(texts) > 1 else 0
            general_held = pack_texts(texts[:n_held], tokenizer, block_size)[: section.eval_max_blocks]
            held_source = "held-out base-model samples"
            texts = texts[n_held:]
        general_train = pack_texts(texts, tokenizer, block_size)
    train = mix_replay(domain_train, general_train, section.replay_fraction, section.train.seed)
    return PretrainData(
        train=train,
        domain_heldout=domain_held,
        general_heldout=general_held,
        n_domain=len(domain_train),
        n_replay=len(train) - len(domain_train),
        general_source=replay_source if len(train) > len(domain_train) else "none",
        general_heldout_source=held_source if general_held else "none",
        domain_heldout_source="held-out documents of " + labels.get("domain", "the domain corpus"),
    )


def heldout_perplexity(model, data: PretrainData, pad_id: int, when: str) -> dict[str, float]:
    """``ppl_domain_<when>`` and ``ppl_general_<when>`` on the held-out blocks."""
    return {
        f"ppl_domain_{when}": perplexity(model, data.domain_heldout, pad_id),
        f"ppl_general_{when}": perplexity(model, data.general_heldout, pad_id),
    }


# --------------------------------------------------------------------------- model and trainer


def freeze_below(model, top_layers: int) -> None:
    """Full fine-tuning of the top ``top_layers`` transformer layers and the final norm only: the
    embeddings (tied to the LM head in small models) and lower layers stay frozen, so backward stops
    at the lowest trained layer (cheaper on CPU) and the general-purpose lower layers are kept."""
    n = model.config.get_text_config().num_hidden_layers
    trained = tuple(f".layers.{i}." for i in range(max(0, n - top_layers), n))
    for name, p in model.named_parameters():
        p.requires_grad = any(t in name for t in trained) or (".norm." in name and ".layers." not in name)


def build_model(section: PretrainSection, base_path: Path):
    """The trainable model: LoRA on the base (optionally embeddings + LM head too), or the full base
    (only its top ``peft.top_layers`` layers when that is set)."""
    from transformers import set_seed

    from domain_lm.models.loading import load_causal_lm, lora_config

    set_seed(section.train.seed)  # LoRA init is random: same seed -> same start
    model = load_causal_lm(base_path, dtype=torch.float32, trainable=True)
    if section.peft.method == "full":
        if section.peft.top_layers:
            freeze_below(model, section.peft.top_layers)
        return model
    from peft import get_peft_model

    modules_to_save = ["embed_tokens", "lm_head"] if section.train_embeddings else None
    conf = lora_config(section.peft.lora, modules_to_save=modules_to_save, model=model, top_layers=section.peft.top_layers)
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


@dataclass
class PretrainResult:
    """What one pretraining run produced (on rank 0; other ranks get the same minus ``before``)."""

    data: PretrainData
    before: dict[str, float]  # held-out perplexity before training
    final_dir: Path  # the adapter (LoRA) or full model the trainer saved
    tokenizer: Any
    history: list[dict[str, Any]]  # the Trainer's log history
    steps: int
    trainable_params: int
    tensorboard_dir: Path | None
    resumed_from: str | None
    train_seconds: float


def train(
    section: PretrainSection,
    base_path: Path,
    corpus_dir: Path,
    work_dir: Path,
    block_size: int,
    resume: bool,
    callbacks: Sequence[Any] = (),
) -> PretrainResult:
    """Train on every rank (``callbacks``: extra ``TrainerCallback``s); returns what was trained."""
    from domain_lm.models.loading import load_tokenizer
    from domain_lm.train.common import last_checkpoint, make_progress_callback, quiet_trainer, training_arguments

    rank, _ = world_rank()
    tokenizer = load_tokenizer(base_path)
    model = build_model(section, base_path)
    data = prepare_data(section, corpus_dir, model, tokenizer, work_dir, block_size)
    if not data.train:
        raise DataError(f"The corpus at {corpus_dir} has no training blocks. Add documents to corpus.sources or lower corpus.min_chars.")

    # Perplexity before training (LoRA starts as the identity, so this is the base model).
    before: dict[str, float] = {}
    if rank == 0:
        before_file = work_dir / BEFORE_FILE
        if before_file.is_file():
            before = json.loads(before_file.read_text())
        else:
            before = heldout_perplexity(model, data, tokenizer.pad_token_id, "before")
            atomic.write_json(before_file, before)

    out_dir = work_dir / "trainer"
    trainer = _trainer_class()(
        model=model,
        args=training_arguments(section.train, out_dir),
        train_dataset=BlockDataset(data.train),
        data_collator=lambda b: collate_blocks(b, tokenizer.pad_token_id),
        callbacks=[make_progress_callback("pretrain", work_dir / "progress.jsonl"), *callbacks],
    )
    ckpt = last_checkpoint(out_dir) if resume else None
    t0 = time.time()
    quiet_trainer(trainer).train(resume_from_checkpoint=ckpt)
    train_s = time.time() - t0
    # Collective under DeepSpeed (ZeRO-3 gathers the weights); only the main process writes.
    final = work_dir / "final"
    trainer.save_model(str(final))
    tb = Path(getattr(trainer.args, "logging_dir", None) or Path(trainer.args.output_dir) / "runs")
    return PretrainResult(
        data=data,
        before=before,
        final_dir=final,
        tokenizer=tokenizer,
        history=trainer.state.log_history,
        steps=trainer.state.global_step,
        trainable_params=sum(p.numel() for p in trainer.model.parameters() if p.requires_grad),
        tensorboard_dir=tb if tb.is_dir() else None,
        resumed_from=ckpt,
        train_seconds=train_s,
    )


def history_metrics(history: list[dict[str, Any]]) -> dict[str, float]:
    """First and last loss, mean tokens/s and the final train loss of a Trainer log history."""
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
