"""Model bundles: build from a model dir, an adapter dir or a run; verify refuses any tampering."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from domain_lm.bundle import MANIFEST_NAME, SIGNATURE_NAME, BundleError, build_bundle, read_manifest, verify_bundle
from domain_lm.pipeline.store import Run, StageResult
from domain_lm.signing import key_id

REPO = Path(__file__).resolve().parents[1]

TEMPLATE = """name: demo_label
version: 1
description: test-only template
"""


@pytest.fixture()
def templates(tmp_path, monkeypatch) -> Path:
    """A stand-in template dir for packaging tests; validation belongs to the tasks package and is
    covered by the tests that bundle the real task_templates/."""
    monkeypatch.setattr("domain_lm.bundle._template_names", lambda d: [{"file": p.name} for p in sorted(Path(d).glob("*.yaml"))])
    d = tmp_path / "templates"
    d.mkdir()
    (d / "demo_label.yaml").write_text(TEMPLATE)
    (d / ".editor-swap").write_text("not part of the bundle")
    (d / ".versions").mkdir()
    (d / ".versions" / "demo_label@0.yaml").write_text(TEMPLATE.replace("version: 1", "version: 0"))
    (d / ".versions" / ".demo_label@0.yaml.tmp123").write_text("half-written")
    return d


SIGNER = Ed25519PrivateKey.generate()
TRUSTED = {key_id(SIGNER.public_key()): SIGNER.public_key()}


def verify(path: Path, **kw):
    return verify_bundle(path, public_keys=TRUSTED, **kw)


@pytest.fixture()
def bundle(tmp_path, tiny_model_dir, templates) -> Path:
    out = tmp_path / "bundle"
    build_bundle(out, templates, model=tiny_model_dir, name="tiny", signing_key=SIGNER)
    return out


def test_build_writes_manifest_over_every_file(bundle, tiny_model_dir):
    entries, digest = read_manifest(bundle)
    files = sorted(
        p.relative_to(bundle).as_posix() for p in bundle.rglob("*") if p.is_file() and p.name not in (MANIFEST_NAME, SIGNATURE_NAME)
    )
    assert sorted(entries) == files
    assert "model/model.safetensors" in entries and "templates/demo_label.yaml" in entries
    assert "templates/.editor-swap" not in entries  # hidden files stay behind ...
    assert "templates/.versions/demo_label@0.yaml" in entries  # ... but template history ships
    assert "templates/.versions/.demo_label@0.yaml.tmp123" not in entries
    assert (bundle / "model" / "model.safetensors").read_bytes() == (tiny_model_dir / "model.safetensors").read_bytes()
    meta = json.loads((bundle / "bundle.json").read_text())
    assert meta["name"] == "tiny" and meta["model_kind"] == "full" and meta["model_summary"]["model_type"] == "llama"
    assert "Verify before serving" in (bundle / "MODEL_CARD.md").read_text()
    info = verify(bundle, manifest_sha256=digest)
    assert info.signed_by == key_id(SIGNER.public_key()) and (bundle / SIGNATURE_NAME).is_file()
    assert info.model_dir == bundle.resolve() / "model" and info.templates_dir == bundle.resolve() / "templates"


def test_manifest_is_sha256sum_compatible(bundle):
    if not shutil.which("sha256sum"):
        pytest.skip("sha256sum not installed")
    ok = subprocess.run(["sha256sum", "--check", "--strict", "--quiet", MANIFEST_NAME], cwd=bundle, capture_output=True, text=True)
    assert ok.returncode == 0, ok.stdout + ok.stderr


def _flip_one_byte(path: Path, offset: int = -1) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("rel", ["model/model.safetensors", "templates/demo_label.yaml", "bundle.json"])
def test_one_changed_byte_is_refused_naming_the_file(bundle, rel):
    _flip_one_byte(bundle / rel, offset=len((bundle / rel).read_bytes()) // 2)
    with pytest.raises(BundleError) as e:
        verify(bundle)
    assert rel in str(e.value) and "does not match its SHA-256" in str(e.value)


def test_added_removed_and_linked_files_are_refused(bundle, tmp_path):
    (bundle / "templates" / "injected.yaml").write_text("name: evil\n")
    with pytest.raises(BundleError, match=r"templates/injected.yaml is not listed"):
        verify(bundle)
    (bundle / "templates" / "injected.yaml").unlink()
    (bundle / "templates" / "demo_label.yaml").unlink()
    with pytest.raises(BundleError, match=r"templates/demo_label.yaml is listed .* but missing"):
        verify(bundle)
    (bundle / "templates" / "demo_label.yaml").symlink_to(tmp_path / "templates" / "demo_label.yaml")
    with pytest.raises(BundleError, match="symbolic link, templates/demo_label.yaml"):
        verify(bundle)


def test_rewritten_manifest_is_caught_by_the_pinned_digest(bundle):
    _, digest = read_manifest(bundle)
    _flip_one_byte(bundle / "templates" / "demo_label.yaml", 0)
    from domain_lm.bundle import write_manifest

    write_manifest(bundle)  # an attacker re-hashes after tampering
    verify_bundle(bundle, allow_unsigned=True, public_keys=None)  # self-consistent again, if nothing checks the signature ...
    with pytest.raises(BundleError, match="manifest was replaced"):
        verify_bundle(bundle, manifest_sha256=digest, allow_unsigned=True)  # ... but not the bundle that was built
    with pytest.raises(BundleError, match="does not match its contents"):
        verify(bundle)  # and the signature no longer matches the manifest


def test_malformed_manifest_and_path_escape_are_refused(bundle):
    text = (bundle / MANIFEST_NAME).read_text()
    (bundle / MANIFEST_NAME).write_text(text + f"{'0' * 64}  ../../etc/passwd\n")
    with pytest.raises(BundleError, match=r"line \d+ is not a valid entry"):
        verify(bundle)


def test_missing_bundle_and_missing_manifest(tmp_path):
    with pytest.raises(BundleError, match="does not exist"):
        verify_bundle(tmp_path / "nope")
    with pytest.raises(BundleError, match="has no MANIFEST.sha256"):
        verify(tmp_path)


def test_invalid_templates_fail_the_build_naming_the_file(tmp_path, tiny_model_dir):
    pytest.importorskip("domain_lm.tasks")
    bad = tmp_path / "tpl"
    shutil.copytree(REPO / "task_templates", bad)
    (bad / "sentiment.yaml").write_text((bad / "sentiment.yaml").read_text().replace("kind: label", "kind: lable"))
    with pytest.raises(BundleError, match=r"sentiment.yaml"):
        build_bundle(tmp_path / "b", bad, model=tiny_model_dir)
    assert not (tmp_path / "b").exists()


def test_failed_build_leaves_nothing(tmp_path, templates):
    (tmp_path / "empty-model").mkdir()
    with pytest.raises(BundleError, match="no config.json"):
        build_bundle(tmp_path / "b", templates, model=tmp_path / "empty-model")
    assert not (tmp_path / "b").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".b.")]


def _fake_stage(run: Path, stage: str, model: Path, finished: float) -> None:
    d = run / stage
    shutil.copytree(model, d / "model")
    (d / "MODEL_CARD.md").write_text(f"# {stage} card\n")
    r = StageResult(
        stage=stage, path=d, fingerprint=f"fp-{stage}", artefacts={"model": "model"}, metrics={"loss": 1.0}, finished_at=finished
    )
    (d / "manifest.json").write_text(json.dumps(r.to_manifest()))


def test_build_from_run_takes_the_final_generator_stage(tmp_path, tiny_model_dir, templates):
    run = tmp_path / "runs" / "demo"
    _fake_stage(run, "sft", tiny_model_dir, 10.0)
    _fake_stage(run, "dpo", tiny_model_dir, 20.0)
    _fake_stage(run, "ppo", tiny_model_dir, 30.0)
    assert Run(run).load("ppo") is not None
    info = build_bundle(tmp_path / "b", templates, run="demo", runs_dir=tmp_path / "runs")
    assert info.metadata["source"]["stage"] == "ppo" and info.metadata["source"]["fingerprint"] == "fp-ppo"
    assert "# ppo card" in (info.root / "MODEL_CARD.md").read_text()
    (tmp_path / "card.md").write_text("# reviewed card\n")
    info = build_bundle(tmp_path / "b2", templates, run=run, stage="sft", model_card=tmp_path / "card.md")
    assert info.metadata["source"]["stage"] == "sft"
    card = (info.root / "MODEL_CARD.md").read_text()
    assert "# reviewed card" in card and "# sft card" not in card  # an explicit card wins
    with pytest.raises(BundleError, match="no complete stage"):
        build_bundle(tmp_path / "b3", templates, run=run, stage="pretrain")


def test_adapter_dir_is_merged_and_adapters_can_be_kept_apart(tmp_path, tiny_model_dir, templates):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    peft = get_peft_model(base, LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    peft.save_pretrained(tmp_path / "adapter")
    merged = build_bundle(tmp_path / "merged", templates, model=tmp_path / "adapter")
    assert merged.metadata["model_kind"] == "merged" and (merged.model_dir / "model.safetensors").is_file()
    assert not (merged.model_dir / "adapter_config.json").exists()
    kept = build_bundle(tmp_path / "kept", templates, model=tiny_model_dir, adapters={"sentiment": tmp_path / "adapter"})
    assert kept.metadata["model_kind"] == "base"
    assert kept.adapters == {"sentiment": kept.root / "adapters" / "sentiment"}
    assert (kept.adapters["sentiment"] / "adapter_config.json").is_file()
    with pytest.raises(BundleError, match="not a LoRA adapter"):
        build_bundle(tmp_path / "x", templates, model=tiny_model_dir, adapters={"bad": tiny_model_dir})


def test_cli_keygen_build_sign_and_verify(tmp_path, tiny_model_dir):
    templates = REPO / "task_templates"  # the real ones: the build validates them with the task registry
    env_cmd = [sys.executable, "-m", "domain_lm", "bundle"]
    k = subprocess.run(env_cmd + ["keygen", "--out", str(tmp_path / "keys")], capture_output=True, text=True)
    assert k.returncode == 0, k.stdout + k.stderr
    private, public = tmp_path / "keys" / "bundle-signing.key", tmp_path / "keys" / "bundle-signing.pub"
    assert private.stat().st_mode & 0o777 == 0o600 and b"PRIVATE KEY" in private.read_bytes()
    b = subprocess.run(
        env_cmd
        + [
            "build",
            "--model",
            str(tiny_model_dir),
            "--templates",
            str(templates),
            "--out",
            str(tmp_path / "b"),
            "--sign-key",
            str(private),
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert b.returncode == 0, b.stdout + b.stderr
    digest = b.stdout.strip()
    assert len(digest) == 64 and digest == read_manifest(tmp_path / "b")[1]
    v = subprocess.run(
        env_cmd + ["verify", str(tmp_path / "b"), "--manifest-sha256", digest, "--public-key", str(public)], capture_output=True, text=True
    )
    assert v.returncode == 0 and "match MANIFEST.sha256" in v.stderr and "signed by key" in v.stderr, v.stdout + v.stderr
    v = subprocess.run(env_cmd + ["verify", str(tmp_path / "b")], capture_output=True, text=True)
    assert v.returncode == 2 and "no trusted public key" in " ".join(v.stderr.split()), v.stdout + v.stderr
    (tmp_path / "b" / SIGNATURE_NAME).unlink()
    v = subprocess.run(env_cmd + ["verify", str(tmp_path / "b"), "--public-key", str(public)], capture_output=True, text=True)
    assert v.returncode == 2 and "is not signed" in " ".join(v.stderr.split()), v.stdout + v.stderr
    s = subprocess.run(env_cmd + ["sign", str(tmp_path / "b"), "--key", str(private)], capture_output=True, text=True)
    assert s.returncode == 0, s.stdout + s.stderr
    _flip_one_byte(tmp_path / "b" / "model" / "config.json", 5)
    v = subprocess.run(env_cmd + ["verify", str(tmp_path / "b"), "--public-key", str(public)], capture_output=True, text=True)
    assert v.returncode == 2 and "model/config.json does not match" in " ".join(v.stderr.split()), v.stdout + v.stderr


def test_bundle_serve_verifies_then_execs_serve_with_adapters(tmp_path, tiny_model_dir, templates, monkeypatch):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM
    from typer.testing import CliRunner

    from domain_lm.cli import app

    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    get_peft_model(base, LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj"])).save_pretrained(tmp_path / "adapter")
    info = build_bundle(tmp_path / "b", templates, model=tiny_model_dir, adapters={"cards": tmp_path / "adapter"})
    calls = []
    monkeypatch.setattr("os.execv", lambda exe, argv: calls.append(argv))
    r = CliRunner().invoke(app, ["bundle", "serve", str(info.root), "--engine", "hf", "--port", "8123"])
    assert r.exit_code != 0 and not calls and "is not signed" in str(r.exception)  # unsigned: refused unless told
    r = CliRunner().invoke(app, ["bundle", "serve", str(info.root), "--allow-unsigned", "--engine", "hf", "--port", "8123"])
    assert r.exit_code == 0, r.output
    argv = calls[0]
    assert argv[1:4] == ["-m", "domain_lm", "serve"]
    assert argv[argv.index("--model") + 1] == str(info.model_dir) and argv[argv.index("--templates") + 1] == str(info.templates_dir)
    assert argv[argv.index("--adapter") + 1] == f"cards={info.root / 'adapters' / 'cards'}"
    assert argv[-4:] == ["--engine", "hf", "--port", "8123"]
    _flip_one_byte(info.root / "adapters" / "cards" / "adapter_config.json", 3)
    calls.clear()
    r = CliRunner().invoke(app, ["bundle", "serve", str(info.root), "--allow-unsigned"])
    assert r.exit_code != 0 and not calls  # nothing is started from a tampered bundle
    assert "adapters/cards/adapter_config.json" in str(r.exception)
