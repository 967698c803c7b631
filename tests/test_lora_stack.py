"""``loading.combine_lora_adapters``: stacked LoRA stages (each trained on the merged model of the one
before) become one adapter on the first model whose outputs equal the last merged model's."""

from __future__ import annotations

import json

import pytest
import torch

from domain_lm.models import loading as L


def _adapter(model_dir, out, seed: int, modules: list[str], layers: list[int] | None, r: int, alpha: int, rslora: bool = False):
    """A random (non-zero) LoRA adapter on ``model_dir`` saved to ``out``; returns (adapter dir, merged dir)."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    cfg = LoraConfig(r=r, lora_alpha=alpha, target_modules=modules, layers_to_transform=layers, init_lora_weights=False, use_rslora=rslora)
    model = get_peft_model(L.load_causal_lm(model_dir), cfg)
    model.save_pretrained(out / "adapter")
    L.load_tokenizer(model_dir).save_pretrained(out / "adapter")
    L.merge_adapter(out / "adapter", out / "model")
    return out / "adapter", out / "model"


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


@pytest.fixture(scope="module")
def stack(tiny_model_dir, tmp_path_factory):
    """pretrain LoRA (attention, top layer) -> sft LoRA on its merge (MLP + v, all layers, rsLoRA) -> ppo LoRA on that merge."""
    root = tmp_path_factory.mktemp("stack")
    a1, m1 = _adapter(tiny_model_dir, root / "pretrain", 1, ["q_proj", "v_proj"], [1], r=4, alpha=8)
    a2, m2 = _adapter(m1, root / "sft", 2, ["v_proj", "up_proj", "down_proj"], None, r=8, alpha=16, rslora=True)
    a3, m3 = _adapter(m2, root / "ppo", 3, ["o_proj"], [0], r=2, alpha=2)
    return root, [a1, a2, a3], [m1, m2, m3]


def test_combined_adapter_equals_the_merged_stack(stack, tiny_model_dir):
    from peft import PeftModel

    root, adapters, merged = stack
    ids = torch.randint(3, 200, (2, 12), generator=torch.Generator().manual_seed(0))
    base = _logits(L.load_causal_lm(tiny_model_dir), ids)
    for k in (1, 2, 3):
        out = L.combine_lora_adapters(adapters[:k], root / f"combined-{k}", tiny_model_dir)
        cfg = json.loads((out / "adapter_config.json").read_text())
        assert cfg["r"] == [4, 12, 14][k - 1] == cfg["lora_alpha"] and cfg["base_model_name_or_path"] == str(tiny_model_dir)
        model = PeftModel.from_pretrained(L.load_causal_lm(tiny_model_dir), out)
        got, want = _logits(model, ids), _logits(L.load_causal_lm(merged[k - 1]), ids)
        assert not torch.allclose(want, base, atol=1e-3)  # the stack really changes the model
        torch.testing.assert_close(got, want, atol=2e-5, rtol=1e-4)


def test_combined_adapter_touches_only_the_adapted_layers(stack, tiny_model_dir):
    from peft import PeftModel

    root, adapters, _ = stack
    out = L.combine_lora_adapters(adapters[:1], root / "only-first", tiny_model_dir)
    model = PeftModel.from_pretrained(L.load_causal_lm(tiny_model_dir), out)
    adapted = {n.split(".lora_A")[0] for n, _ in model.named_parameters() if ".lora_A" in n}
    # layers_to_transform=[1], q and v only: no LoRA module on layer 0 (none that loads as zeros either)
    assert adapted == {f"base_model.model.model.layers.1.self_attn.{m}" for m in ("q_proj", "v_proj")}


def test_modules_to_save_cannot_be_stacked(tiny_model_dir, tmp_path):
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(L.load_causal_lm(tiny_model_dir), LoraConfig(r=2, target_modules=["q_proj"], modules_to_save=["lm_head"]))
    model.save_pretrained(tmp_path / "a")
    with pytest.raises(L.AdapterStackError, match="fully trained modules"):
        L.combine_lora_adapters([tmp_path / "a"], tmp_path / "out", tiny_model_dir)
    with pytest.raises(L.AdapterStackError, match="not a readable adapter"):
        L.check_plain_lora(tmp_path / "missing")
