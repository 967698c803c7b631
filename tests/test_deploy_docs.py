"""docs/deploy.md: every `domain-lm` command in it parses, and every repository file it names exists."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "deploy.md"


def _shell_lines() -> list[str]:
    """The commands of the doc's bash blocks, continuation lines joined."""
    blocks = re.findall(r"```bash\n(.*?)```", DOC.read_text(), flags=re.S)
    lines = []
    for block in blocks:
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" #")[0].strip()
            if line and not line.startswith("#"):
                lines.append(line)
    return lines


def _domain_lm_invocations() -> list[list[str]]:
    from domain_lm.cli import COMMANDS

    out = []
    for line in _shell_lines():
        line = re.sub(r'"\$\([^)]*\)"', "DIGEST", line)  # "$(cat x.sha256)" -> a placeholder word
        for part in re.split(r"\s(?:\||>>?|&&)\s", line):
            words = shlex.split(part)
            for i, w in enumerate(words):
                nxt = words[i + 1] if i + 1 < len(words) else ""
                if w.endswith("bin/domain-lm") or (w == "domain-lm" and nxt in COMMANDS):
                    out.append(words[i + 1:])
                    break
                if w == "--module" and i + 1 < len(words) and words[i + 1] == "domain_lm":
                    out.append(words[i + 2:])
                    break
    return out


def test_doc_has_a_section_per_target():
    text = DOC.read_text()
    for title in ("Single CPU server", "GPU server", "Kubernetes", "Bare metal", "Air-gapped", "multi-node training", "Hardening"):
        assert re.search(rf"^## \d+\. .*{title}", text, flags=re.M | re.I), title


def test_every_domain_lm_command_in_the_doc_parses():
    import typer

    from domain_lm.cli import app

    root = typer.main.get_command(app)
    calls = _domain_lm_invocations()
    assert len(calls) >= 15
    seen = set()
    for args in calls:
        cmd, rest, path = root, list(args), ["domain-lm"]
        while True:
            ctx = cmd.make_context(" ".join(path), list(rest))  # raises on an unknown option or a missing value
            sub = getattr(cmd, "commands", None)
            remaining = [*getattr(ctx, "_protected_args", []), *ctx.args]
            if not sub or not remaining or remaining[0] not in sub:
                break
            path.append(remaining[0])
            cmd, rest = sub[remaining[0]], remaining[1:]
        seen.add(" ".join(path))
    assert {"domain-lm bundle build", "domain-lm bundle verify", "domain-lm bundle serve", "domain-lm serve keygen"} <= seen


def test_repository_paths_named_in_the_doc_exist():
    text = DOC.read_text()
    # `kubectl rollout status deploy/NAME` names a Deployment, and deploy/.env is made by the reader.
    text = re.sub(r"rollout status deploy/\S+", "", text).replace("deploy/.env", "")
    paths = set(re.findall(r"(?<![\w/])((?:deploy|docs|task_templates)/[\w./-]+[\w])", text))
    assert "deploy/helm/domain-lm" in paths
    missing = sorted(p for p in paths if not (REPO / p).exists())
    assert not missing, f"docs/deploy.md names files that do not exist: {missing}"


@pytest.mark.parametrize("target", ["deploy/docker-compose.yaml", "deploy/docker-compose.gpu.yaml", "deploy/Dockerfile.cpu",
                                    "deploy/Dockerfile.gpu", "deploy/systemd/domain-lm.service", "deploy/offline/install.sh",
                                    "deploy/nginx/domain-lm.conf"])
def test_each_deploy_file_is_documented(target):
    assert target in DOC.read_text()
