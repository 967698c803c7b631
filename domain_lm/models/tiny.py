"""A tiny, randomly initialised Llama model with a small byte-level BPE tokenizer.

Built locally in seconds (no download), loadable by transformers, PEFT, TRL and vLLM, so the test
suite and the pipeline smoke test exercise the real code paths on a 2-core CPU.
"""

from __future__ import annotations

from pathlib import Path

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

_TRAIN_TEXT = [
    "The bank reported net interest income of 1.2 billion dollars for 2022, up 8 percent.",
    "Credit card balances grew while mortgage loans declined; the outlook is positive.",
    "Operating profit fell sharply and the company warned of negative results.",
    "The central bank kept the policy rate unchanged; inflation remains elevated.",
    "sentiment positive negative neutral entities company organisation person place",
    '{"value": 12.5, "unit": "million", "period": "2022", "evidence": "revenue"}',
    "Summary: revenue increased, costs decreased, risks include credit losses.",
    "银行发布年度报告，营业收入增长百分之八，信用卡业务表现良好，贷款风险上升。",
    "上述文字表达了褒义和贬义倾向？积极 消极 中性 公司 机构 人物 地点",
    "Is this text about credit cards or loans? credit_card loan",
]


def build_tiny_model(path: str | Path, vocab_size: int = 1024, hidden_size: int = 128, layers: int = 2, seed: int = 0) -> Path:
    """Write a tiny Llama checkpoint + tokenizer (with a ChatML chat template) to ``path``."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<pad>"]
    tk = Tokenizer(models.BPE(unk_token=None))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    tk.train_from_iterator(_TRAIN_TEXT * 4, trainer=trainer)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=tk, eos_token="<|im_end|>", bos_token="<|im_start|>", pad_token="<pad>", unk_token=None
    )
    tok.chat_template = CHAT_TEMPLATE
    tok.model_max_length = 2048
    tok.save_pretrained(path)

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=layers,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        tie_word_embeddings=True,
        torch_dtype="float32",
    )
    model = LlamaForCausalLM(cfg)
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.eos_token_id = tok.eos_token_id
    model.save_pretrained(path, safe_serialization=True)
    return path
