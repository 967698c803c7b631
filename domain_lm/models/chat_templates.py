"""Chat templates for base models that ship without one.

SFT, evaluation and serving all render prompts with the tokenizer's chat template, so a base
checkpoint (e.g. Gemma 3 270M *pretrained*) needs one before it can be instruction-tuned. The
template follows the turn markers the model's vocabulary already has, so no embedding is added:

- Gemma vocabularies (``<start_of_turn>``/``<end_of_turn>``): Gemma's turn format; a system
  message is folded into the first user turn (Gemma has no system role).
- ChatML vocabularies (``<|im_start|>``/``<|im_end|>``).
- anything else: plain ``### Role`` headers, each turn closed by the EOS token.

The token that closes an assistant turn becomes the tokenizer's EOS (and joins the generation
config's EOS list), so training targets, label scoring and decoding stop at the same token.
"""

from __future__ import annotations

from typing import Any

# No whitespace control ("{%-"): transformers renders with trim_blocks/lstrip_blocks, and every
# newline below is part of the format.
GEMMA = (
    "{{ bos_token }}{% set ns = namespace(system='') %}"
    "{% for m in messages %}"
    "{% if m['role'] == 'system' %}{% set ns.system = m['content'] ~ '\\n\\n' %}"
    "{% else %}<start_of_turn>{{ 'model' if m['role'] == 'assistant' else 'user' }}\n"
    "{% if m['role'] == 'user' %}{{ ns.system }}{% set ns.system = '' %}{% endif %}"
    "{{ m['content'] | trim }}<end_of_turn>\n"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)

CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

PLAIN = (
    "{{ bos_token or '' }}"
    "{% for m in messages %}### {{ m['role'] | capitalize }}\n{{ m['content'] }}{{ eos_token }}\n{% endfor %}"
    "{% if add_generation_prompt %}### Assistant\n{% endif %}"
)


def default_template(tokenizer: Any) -> tuple[str, str | None]:
    """(chat template, token that ends an assistant turn) for a tokenizer's vocabulary."""
    vocab = tokenizer.get_vocab()
    if "<start_of_turn>" in vocab and "<end_of_turn>" in vocab:
        return GEMMA, "<end_of_turn>"
    if "<|im_start|>" in vocab and "<|im_end|>" in vocab:
        return CHATML, "<|im_end|>"
    return PLAIN, tokenizer.eos_token


def ensure_chat_template(tokenizer: Any, generation_config: Any = None) -> bool:
    """Give ``tokenizer`` a chat template when it has none; returns whether one was added."""
    if getattr(tokenizer, "chat_template", None):
        return False
    template, end = default_template(tokenizer)
    tokenizer.chat_template = template
    if end and end != tokenizer.eos_token:
        old_eos = tokenizer.eos_token_id
        tokenizer.eos_token = end
        if generation_config is not None:
            ids = generation_config.eos_token_id
            ids = list(ids) if isinstance(ids, (list, tuple)) else ([ids] if ids is not None else [])
            for tid in (tokenizer.eos_token_id, old_eos):
                if tid is not None and tid not in ids:
                    ids.append(tid)
            generation_config.eos_token_id = ids
    return True
