"""The air-gapped path for real: wheelhouse -> `pip --no-index --require-hashes` into a fresh venv ->
serve the tiny model from a verified bundle with API keys on; a one-byte-tampered bundle is refused.

The wheelhouse holds the project's own wheel plus a small subset of its dependencies (the
command-line stack: typer, click, rich, ...), which the fresh venv really installs from it. A full
wheelhouse (torch, vLLM) is gigabytes, so the heavy dependencies that were left out are made
visible to the fresh venv through a `.pth` line pointing at this test venv's site-packages, added
*after* the offline install; the fresh venv's own site-packages come first on sys.path.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import sysconfig
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from domain_lm.bundle import build_bundle

REPO = Path(__file__).resolve().parents[1]
SUBSET = ["typer", "click", "rich", "shellingham", "markdown-it-py", "mdurl", "pygments"]

pytestmark = pytest.mark.slow


def _offline_env(**extra: str) -> dict[str, str]:
    """The environment of a process of the offline install: no pip settings, and no PYTHONPATH (which
    would put a source checkout in front of what was installed)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_") and k != "PYTHONPATH"}
    return {**env, **extra}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _http(method: str, url: str, body: dict | None = None, headers: dict | None = None) -> tuple[int, dict]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read() or b"{}")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


@pytest.fixture(scope="module")
def offline_venv(tmp_path_factory) -> Path:
    """Build a partial wheelhouse and install it with install.sh (no index, hashes required)."""
    work = tmp_path_factory.mktemp("offline")
    wh = work / "wheelhouse"
    b = subprocess.run(
        [sys.executable, str(REPO / "deploy" / "offline" / "build_wheelhouse.py"), "--out", str(wh), "--only", *SUBSET],
        capture_output=True,
        text=True,
        timeout=600,
    )
    if b.returncode != 0 and any(
        s in b.stdout + b.stderr for s in ("NewConnectionError", "Max retries exceeded", "Temporary failure in name resolution")
    ):
        pytest.skip("the package index is unreachable, so the wheelhouse cannot be built here")
    assert b.returncode == 0, b.stdout[-3000:] + b.stderr[-3000:]
    lock = (wh / "requirements.lock").read_text()
    assert "domain-lm==0.1.0 --hash=sha256:" in lock and all(f"{n}==" in lock for n in SUBSET)
    assert all("--hash=sha256:" in line for line in lock.splitlines() if line and not line.startswith("#"))

    venv = work / "venv"
    env = _offline_env()
    i = subprocess.run(
        ["bash", str(wh / "install.sh"), str(wh), str(venv)],
        env={**env, "PYTHON": sys.executable},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert i.returncode == 0, i.stdout[-3000:] + i.stderr[-3000:]
    assert "Successfully installed" in i.stdout and "domain-lm-0.1.0" in i.stdout

    # The heavy dependencies left out of the subset (torch, transformers, fastapi...) come from here.
    site = Path(
        subprocess.check_output(
            [str(venv / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], text=True, env=_offline_env()
        ).strip()
    )
    paths = dict.fromkeys([sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]])
    (site / "zz_heavy_deps_from_test_venv.pth").write_text("\n".join(paths) + "\n")
    where = subprocess.run(
        [
            str(venv / "bin" / "python"),
            "-c",
            "import domain_lm, rich, typer; print(domain_lm.__file__); print(rich.__file__); print(typer.__file__)",
        ],
        capture_output=True,
        text=True,
        cwd=work,
        env=_offline_env(),
    )
    assert where.returncode == 0, where.stderr
    for line in where.stdout.split():
        assert line.startswith(str(site)), f"{line} should come from the offline install in {site}"
    return venv


def test_wheelhouse_install_refuses_a_changed_wheel(tmp_path):
    """The hashes are enforced: a wheel whose bytes differ from the lock is not installed."""
    wh = tmp_path / "wh"
    b = subprocess.run(
        [sys.executable, str(REPO / "deploy" / "offline" / "build_wheelhouse.py"), "--out", str(wh), "--only", "mdurl"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    if b.returncode != 0 and "Max retries exceeded" in b.stdout + b.stderr:
        pytest.skip("package index unreachable")
    assert b.returncode == 0, b.stderr[-2000:]
    whl = next(wh.glob("mdurl-*.whl"))
    data = bytearray(whl.read_bytes())
    data[len(data) // 2] ^= 0xFF
    whl.write_bytes(bytes(data))
    # SHA256SUMS catches it first ...
    r = subprocess.run(
        ["bash", str(wh / "install.sh"), str(wh), str(tmp_path / "v")],
        env={**os.environ, "PYTHON": sys.executable},
        capture_output=True,
        text=True,
    )
    assert r.returncode != 0 and "FAILED" in r.stdout + r.stderr and not (tmp_path / "v").exists()
    # ... and pip's hash-checking mode catches it even when SHA256SUMS is regenerated by an attacker.
    subprocess.run("sha256sum *.whl install.sh requirements.lock > SHA256SUMS", shell=True, cwd=wh, check=True)
    r = subprocess.run(
        ["bash", str(wh / "install.sh"), str(wh), str(tmp_path / "v")],
        env={**os.environ, "PYTHON": sys.executable},
        capture_output=True,
        text=True,
    )
    assert r.returncode != 0 and "THESE PACKAGES DO NOT MATCH THE HASHES" in r.stdout + r.stderr


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory, tiny_model_dir) -> Path:
    """A bundle signed with a fresh key; its public key sits in ``<bundles>/keys/bundle-signing.pub``."""
    from domain_lm.signing import generate_keypair, load_private_key

    root = tmp_path_factory.mktemp("bundles")
    generate_keypair(root / "keys" / "bundle-signing.key", root / "keys" / "bundle-signing.pub")
    out = root / "bank-v1"
    info = build_bundle(
        out,
        REPO / "task_templates",
        model=tiny_model_dir,
        name="bank-v1",
        signing_key=load_private_key(root / "keys" / "bundle-signing.key"),
    )
    assert {t["name"] for t in info.metadata["task_templates"]} >= {"sentiment", "entities"} and info.signed_by
    return out


def _public_key(bundle_dir: Path) -> str:
    return str(bundle_dir.parent / "keys" / "bundle-signing.pub")


def test_tampered_bundle_is_refused_before_serving(offline_venv, bundle_dir, tmp_path):
    bad = tmp_path / "bank-v1"
    shutil.copytree(bundle_dir, bad)
    weights = bad / "model" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-100] ^= 0x01  # one byte, in the tensor data
    weights.write_bytes(bytes(data))
    port = _free_port()
    r = subprocess.run(
        [
            str(offline_venv / "bin" / "domain-lm"),
            "bundle",
            "serve",
            str(bad),
            "--public-key",
            _public_key(bundle_dir),
            "--engine",
            "hf",
            "--port",
            str(port),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env=_offline_env(DOMAIN_LM_AUTH="false"),
    )
    msg = " ".join(r.stderr.split())
    assert r.returncode == 2, r.stdout + r.stderr
    assert "model/model.safetensors does not match its SHA-256" in msg and "will not be served" in msg
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", port)) != 0  # nothing was started


def test_offline_install_serves_a_verified_bundle_with_api_keys(offline_venv, bundle_dir, tmp_path):
    dlm = str(offline_venv / "bin" / "domain-lm")
    gen = subprocess.run(
        [dlm, "serve", "keygen", "--id", "teller-app", "--tasks", "sentiment"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=_offline_env(),
    )
    assert gen.returncode == 0, gen.stderr
    key = gen.stdout.split("key:")[1].split()[0]
    entry = json.loads(gen.stdout.split("entry:")[1].strip())
    assert key not in json.dumps(entry)  # only the hash is configured

    port = _free_port()
    audit = tmp_path / "audit.jsonl"
    env = _offline_env(DOMAIN_LM_API_KEYS=json.dumps([entry]), DOMAIN_LM_AUDIT_LOG=str(audit))
    env.pop("DOMAIN_LM_AUTH", None)
    digest = (bundle_dir / "MANIFEST.sha256").read_bytes()
    import hashlib

    cmd = [
        dlm,
        "bundle",
        "serve",
        str(bundle_dir),
        "--manifest-sha256",
        hashlib.sha256(digest).hexdigest(),
        "--public-key",
        _public_key(bundle_dir),
        "--engine",
        "hf",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    proc = subprocess.Popen(cmd, env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 180
        while True:
            assert proc.poll() is None, proc.stdout.read()
            try:
                if _http("GET", base + "/readyz")[0] == 200:
                    break
            except (urllib.error.URLError, ConnectionError):
                pass
            assert time.time() < deadline, "service did not become ready"
            time.sleep(0.5)

        status, _ = _http("POST", base + "/v1/tasks/sentiment", {"input": {"text": "Net profit rose 12%."}})
        assert status == 401
        status, _ = _http("POST", base + "/v1/tasks/sentiment", {"input": {"text": "x"}}, {"Authorization": "Bearer dlm-wrong"})
        assert status == 401
        auth = {"Authorization": f"Bearer {key}"}
        status, body = _http("POST", base + "/v1/tasks/sentiment", {"input": {"text": "Net profit rose 12% on strong card fees."}}, auth)
        assert status == 200, body
        assert body["output"] in ("positive", "negative", "neutral") and body["task"] == "sentiment"
        assert body["usage"]["prompt_tokens"] > 0
        status, _ = _http("POST", base + "/v1/tasks/entities", {"input": {"text": "HSBC in London"}}, auth)
        assert status == 403  # the key is scoped to sentiment
        status, models = _http("GET", base + "/v1/models", headers=auth)
        assert status == 200
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    lines = [json.loads(line) for line in audit.read_text().splitlines() if line.strip()]
    calls = [r for r in lines if "sentiment" in json.dumps(r)]
    assert any("teller-app" in json.dumps(r) for r in calls), lines[-5:]
    assert "Net profit rose" not in audit.read_text()  # no request bodies unless enabled
