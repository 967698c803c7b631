"""The one place that loads models, tokenizers and LoRA adapters, and saves trained models as
stage artefacts (every stage uses these)."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from domain_lm.errors import ModelNotFoundError

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from domain_lm.config import LoraSection

ADAPTER_CONFIG = "adapter_config.json"


def default_dtype() -> torch.dtype:
    """float32 on CPU (bf16 is emulated and ~30x slower there); bf16 on a GPU that supports it."""
    if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def is_adapter_dir(path: str | Path) -> bool:
    return (Path(path) / ADAPTER_CONFIG).is_file()


def adapter_base(path: str | Path) -> str:
    """The base model path recorded in an adapter directory."""
    cfg = json.loads((Path(path) / ADAPTER_CONFIG).read_text())
    return cfg["base_model_name_or_path"]


def convert_to_safetensors(src: Path, dest: Path) -> int:
    """Load a GGUF file or HF directory and save it as float32 safetensors with its tokenizer.

    Returns the parameter count. The GGUF quantisation config is dropped: the saved weights are
    de-quantised, so keeping it would make transformers try to re-quantise on load.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs: dict[str, Any] = {}
    root = src
    if src.is_file():
        root, kwargs["gguf_file"] = src.parent, src.name
    tok = AutoTokenizer.from_pretrained(root, **kwargs)
    model = AutoModelForCausalLM.from_pretrained(root, dtype=torch.float32, **kwargs)
    if hasattr(model.config, "quantization_config"):
        # Rebuild a plain model from the config without the GGUF quantisation and copy the
        # de-quantised weights over, so nothing of the quantiser is left to serialise.
        config = model.config
        del config.quantization_config
        clean = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        clean.load_state_dict(model.state_dict())
        clean.generation_config = model.generation_config
        model = clean
    from domain_lm.models.chat_templates import ensure_chat_template

    # A base (non-instruct) checkpoint has no chat template; SFT and serving render with one.
    ensure_chat_template(tok, model.generation_config)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    model.generation_config.pad_token_id = tok.pad_token_id
    model.save_pretrained(dest, safe_serialization=True)
    tok.save_pretrained(dest)
    return sum(p.numel() for p in model.parameters())


def load_tokenizer(path: str | Path) -> "PreTrainedTokenizerBase":
    from transformers import AutoTokenizer

    path = Path(path)
    if is_adapter_dir(path) and not (path / "tokenizer_config.json").is_file():
        path = Path(adapter_base(path))
    if not path.exists():
        raise ModelNotFoundError(f"Model directory {path} does not exist.")
    tok = AutoTokenizer.from_pretrained(path)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_causal_lm(path: str | Path, dtype: torch.dtype | None = None, trainable: bool = False) -> "PreTrainedModel":
    """Load a causal LM from a model directory, or base + adapter from an adapter directory."""
    from transformers import AutoModelForCausalLM

    path = Path(path)
    if not path.exists():
        raise ModelNotFoundError(f"Model directory {path} does not exist.")
    dtype = dtype or default_dtype()
    if is_adapter_dir(path):
        from peft import PeftModel

        base = AutoModelForCausalLM.from_pretrained(adapter_base(path), dtype=dtype)
        model = PeftModel.from_pretrained(base, path, is_trainable=trainable)
    else:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    if not trainable:
        model.eval()
    return model


def load_seq_classifier(
    path: str | Path, num_labels: int = 1, dtype: torch.dtype | None = None, trainable: bool = False
) -> "PreTrainedModel":
    """A sequence-classification model (a reward model's backbone + score head) from a model directory."""
    from transformers import AutoModelForSequenceClassification

    path = Path(path)
    if not path.exists():
        raise ModelNotFoundError(f"Model directory {path} does not exist.")
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=num_labels, dtype=dtype or default_dtype())
    if not trainable:
        model.eval().requires_grad_(False)
    return model


def lora_config(
    section: "LoraSection",
    task_type: str = "CAUSAL_LM",
    modules_to_save: list[str] | None = None,
    model: Any = None,
    top_layers: int | None = None,
):
    """PEFT LoraConfig from the config section.

    With ``top_layers`` (and the ``model``), only the top N transformer layers get adapters, so
    backward stops at the lowest adapted layer (several times cheaper on CPU). PEFT ignores
    ``layers_to_transform`` when ``target_modules`` is the string "all-linear", so the linear
    module names are spelled out in that case.
    """
    from peft import LoraConfig

    target: Any = section.target_modules
    layers = None
    n = getattr(model.config.get_text_config(), "num_hidden_layers", None) if (model is not None and top_layers) else None
    if n and top_layers < n:
        layers = list(range(n - top_layers, n))
        if target == "all-linear":
            heads = {"lm_head", "score", "classifier"}
            linear = {name.rsplit(".", 1)[-1] for name, mod in model.named_modules() if isinstance(mod, torch.nn.Linear)}
            target = sorted(linear - heads)
    return LoraConfig(
        r=section.r,
        lora_alpha=section.alpha,
        lora_dropout=section.dropout,
        target_modules=target,
        task_type=task_type,
        modules_to_save=modules_to_save,
        layers_to_transform=layers,
    )


def merge_adapter(adapter_dir: str | Path, out_dir: str | Path) -> Path:
    """Merge a LoRA adapter into its base and save full weights + tokenizer to ``out_dir``."""
    model = load_causal_lm(adapter_dir, dtype=torch.float32)
    merged = model.merge_and_unload()
    merged.save_pretrained(out_dir, safe_serialization=True)
    load_tokenizer(adapter_dir).save_pretrained(out_dir)
    return Path(out_dir)


def save_model(
    source: "PreTrainedModel | str | Path",
    out_dir: str | Path,
    tokenizer: "PreTrainedTokenizerBase | None" = None,
    adapter_dir: str | Path | None = None,
) -> Path:
    """Write a trained model as a stage's artefacts: full weights in ``out_dir`` (what later stages
    and the engines load) and, for LoRA, the adapter in ``adapter_dir`` (served per request).

    ``source`` is the model in memory (a PEFT model is merged into its base), or the directory a
    trainer saved it to: an adapter directory is merged into its base, a full model is copied. The
    tokenizer is saved next to the weights (for an adapter directory, its own or its base's).
    """
    out_dir = Path(out_dir)
    if isinstance(source, (str, Path)):
        src = Path(source)
        if is_adapter_dir(src):
            if adapter_dir is not None and Path(adapter_dir) != src:
                shutil.copytree(src, adapter_dir)
            return merge_adapter(src, out_dir)
        shutil.copytree(src, out_dir)
        if tokenizer is not None:
            tokenizer.save_pretrained(out_dir)
        return out_dir
    from peft import PeftModel

    model = source
    if isinstance(model, PeftModel):  # keep the adapter, then merge it into the base
        if adapter_dir is not None:
            model.save_pretrained(adapter_dir)
            if tokenizer is not None:
                tokenizer.save_pretrained(adapter_dir)
        model = model.merge_and_unload()
    model.save_pretrained(out_dir, safe_serialization=True)
    if tokenizer is not None:
        tokenizer.save_pretrained(out_dir)
    return out_dir


# --------------------------------------------------------------------------- stacked LoRA adapters

ADAPTER_WEIGHTS = "adapter_model.safetensors"


class AdapterStackError(ValueError):
    """The adapters cannot be combined into one plain LoRA adapter (the caller serves merged weights)."""


def _lora_scaling(cfg: dict[str, Any]) -> float:
    r, alpha = int(cfg["r"]), float(cfg.get("lora_alpha", cfg["r"]))
    return alpha / (r**0.5) if cfg.get("use_rslora") else alpha / r


def check_plain_lora(adapter_dir: str | Path) -> dict[str, Any]:
    """The adapter's config when it is a plain LoRA on linear layers (what an engine can serve and
    ``combine_lora_adapters`` can sum exactly); ``AdapterStackError`` naming what is not."""
    path = Path(adapter_dir)
    try:
        cfg = json.loads((path / ADAPTER_CONFIG).read_text())
    except (OSError, ValueError) as e:
        raise AdapterStackError(f"{path} is not a readable adapter directory ({e})") from None
    problems = []
    if cfg.get("peft_type", "LORA") != "LORA":
        problems.append(f"peft_type {cfg.get('peft_type')}")
    if cfg.get("modules_to_save"):
        problems.append(f"fully trained modules {cfg['modules_to_save']}")
    if cfg.get("use_dora"):
        problems.append("DoRA")
    if cfg.get("bias", "none") != "none":
        problems.append(f"bias={cfg['bias']}")
    if cfg.get("rank_pattern") or cfg.get("alpha_pattern"):
        problems.append("per-module ranks")
    if not (path / ADAPTER_WEIGHTS).is_file():
        problems.append(f"no {ADAPTER_WEIGHTS}")
    if problems:
        raise AdapterStackError(f"{path}: not a plain LoRA adapter ({', '.join(problems)})")
    return cfg


def _lora_pairs(path: Path) -> dict[str, dict[str, torch.Tensor]]:
    """module path -> {"A": (r, in), "B": (out, r)} of one adapter's safetensors file."""
    from safetensors.torch import load_file

    pairs: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in load_file(path / ADAPTER_WEIGHTS).items():
        module, sep, part = key.rpartition(".lora_")
        if not sep or part not in ("A.weight", "B.weight"):
            raise AdapterStackError(f"{path}: tensor {key} is not a LoRA A/B matrix of a linear layer")
        pairs.setdefault(module, {})[part[0]] = tensor.to(torch.float32)
    broken = [m for m, ab in pairs.items() if set(ab) != {"A", "B"}]
    if broken:
        raise AdapterStackError(f"{path}: modules {broken[:3]} lack their A or B matrix")
    return pairs


def combine_lora_adapters(adapters: "list[str | Path]", out_dir: str | Path, base_model: str | Path) -> Path:
    """One LoRA adapter, relative to ``base_model``, equal to applying ``adapters`` one after the other.

    A stage trains its LoRA on the merged output of the stage before (SFT on the merged pretrain
    model, PPO on the merged SFT model), so its weights are ``W + s1 B1 A1 + s2 B2 A2 + ...``. That
    sum is the LoRA ``[B1 B2 ...] [s1 A1; s2 A2; ...]`` of rank ``r1 + r2 + ...`` with scaling 1
    (``lora_alpha = r``): exact, no retraining. A module only some adapters touch gets zero blocks
    for the others, so every module has the same rank and ``layers_to_transform`` of each adapter is
    respected: the combined adapter targets exactly the modules that have tensors. ``AdapterStackError`` when an
    adapter is not a plain LoRA (fully trained embeddings, DoRA, ...): serve merged weights then.
    """
    if not adapters:
        raise AdapterStackError("no adapters to combine")
    configs = [check_plain_lora(a) for a in adapters]
    stacks = [(_lora_pairs(Path(a)), _lora_scaling(c), int(c["r"])) for a, c in zip(adapters, configs)]
    rank = sum(r for _, _, r in stacks)
    modules = sorted({m for pairs, _, _ in stacks for m in pairs})
    tensors: dict[str, torch.Tensor] = {}
    for module in modules:
        shape = next((p[module]["B"].shape[0], p[module]["A"].shape[1]) for p, _, _ in stacks if module in p)
        a_blocks, b_blocks = [], []
        for pairs, scale, r in stacks:
            ab = pairs.get(module)
            if ab is not None and (ab["B"].shape[0], ab["A"].shape[1]) != shape:
                raise AdapterStackError(
                    f"{module}: adapters disagree on its shape ({tuple(shape)} vs {ab['B'].shape[0]}x{ab['A'].shape[1]})")
            a_blocks.append(scale * ab["A"] if ab is not None else torch.zeros(r, shape[1]))
            b_blocks.append(ab["B"] if ab is not None else torch.zeros(shape[0], r))
        tensors[f"{module}.lora_A.weight"] = torch.cat(a_blocks, dim=0).contiguous()
        tensors[f"{module}.lora_B.weight"] = torch.cat(b_blocks, dim=1).contiguous()
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_file(tensors, out / ADAPTER_WEIGHTS)
    cfg = dict(configs[-1])
    cfg.update(
        r=rank,
        lora_alpha=rank,
        use_rslora=False,
        lora_dropout=0.0,
        # Exactly the modules that have tensors (PEFT full-matches a string against module names), so
        # no layer an adapter's ``layers_to_transform`` left alone gets an adapter on loading.
        target_modules="|".join(re.escape(m.removeprefix("base_model.model.")) for m in modules),
        layers_to_transform=None,
        layers_pattern=None,
        base_model_name_or_path=str(base_model),
    )
    (out / ADAPTER_CONFIG).write_text(json.dumps(cfg, indent=2))
    return out
