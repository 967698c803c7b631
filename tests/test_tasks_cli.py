"""``domain-lm tasks validate|list|render`` through the real CLI entry point."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

from typer.testing import CliRunner

from domain_lm.cli import app
from tests.tasks_fixtures import MINI, REPO, TEMPLATES, line_of, mini

runner = CliRunner()


def test_validate_bundled_templates_ok():
    r = runner.invoke(app, ["tasks", "validate", str(TEMPLATES)])
    assert r.exit_code == 0, r.output
    assert "7 template version(s) valid" in r.output
    assert "ok sentiment v1" in r.output


def test_validate_reports_file_and_line_and_exits_nonzero(tmp_path):
    d = tmp_path / "tpl"
    shutil.copytree(TEMPLATES, d, ignore=shutil.ignore_patterns(".versions"))
    bad = mini(**{"    output: reject": "    output: maybe"})
    (d / "mini.yaml").write_text(bad, encoding="utf-8")
    # A real subprocess: the installed entry point, exit code and output as a user sees them.
    proc = subprocess.run(
        [sys.executable, "-m", "domain_lm", "tasks", "validate", str(d)],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={"COLUMNS": "400", "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"},
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out
    assert f"{d / 'mini.yaml'}:{line_of(bad, 'output: maybe')}:" in out
    assert "1 problem(s)" in out and "ok sentiment v1" in out  # the good ones still checked


def test_validate_empty_dir_fails(tmp_path):
    r = runner.invoke(app, ["tasks", "validate", str(tmp_path)])
    assert r.exit_code == 1 and "no templates" in r.output


def test_render_json_and_input_errors():
    r = runner.invoke(
        app, ["tasks", "render", "sentiment", "--dir", str(TEMPLATES), "--input", '{"text": "利润增长"}', "--lang", "zh", "--json"]
    )
    assert r.exit_code == 0, r.output
    messages = json.loads(r.output)
    assert messages[-1] == {"role": "user", "content": "利润增长\n上述文字表达了积极、消极还是中性的倾向？请回答：积极、消极或中性。"}
    r = runner.invoke(app, ["tasks", "render", "sentiment", "--dir", str(TEMPLATES), "--input", '{"txt": "x"}'])
    assert r.exit_code != 0 and "txt" in str(r.exception)


def test_render_and_list_with_a_new_template(tmp_path, monkeypatch):
    from domain_lm.core.progress import console

    monkeypatch.setattr(console, "_width", 200)  # the shared console's width was fixed when it was made
    (tmp_path / "mini.yaml").write_text(MINI, encoding="utf-8")
    r = runner.invoke(app, ["tasks", "render", "mini", "--dir", str(tmp_path), "--input", '{"text": "Loan of 1k"}', "--variant", "1"])
    assert r.exit_code == 0, r.output
    assert "Is it so? Loan of 1k" in r.output and "approve" in r.output
    r = runner.invoke(app, ["tasks", "list", "--dir", str(tmp_path)])
    assert r.exit_code == 0 and "mini" in r.output and "approve/reject" in r.output


def test_docs_example_template_is_valid(tmp_path):
    """The "adding a task" example in docs/templates.md validates and renders as documented."""
    doc = (REPO / "docs" / "templates.md").read_text(encoding="utf-8")
    block = doc.split("```yaml\n", 1)[1].split("```", 1)[0]
    (tmp_path / "fee_complaint.yaml").write_text(block, encoding="utf-8")
    r = runner.invoke(app, ["tasks", "validate", str(tmp_path)])
    assert r.exit_code == 0, r.output
    from domain_lm.tasks import TemplateRegistry

    t = TemplateRegistry.load(tmp_path).get("fee_complaint")
    assert t.choices("zh") == ["收费", "非收费"] and t.parse_output("Not fee", "en") == "not_fee"


def test_parse_checks_answers_against_the_contract():
    r = runner.invoke(app, ["tasks", "parse", "sentiment", " 积极。", "--lang", "zh", "--dir", str(TEMPLATES)])
    assert r.exit_code == 0 and json.loads(r.output) == "positive"
    r = runner.invoke(
        app,
        [
            "tasks",
            "parse",
            "extraction",
            '```json\n{"value": 1, "unit": "%", "period": null, "evidence": null}\n```',
            "--dir",
            str(TEMPLATES),
        ],
    )
    assert r.exit_code == 0 and json.loads(r.output) == {"value": 1, "unit": "%", "period": None, "evidence": None}
    r = runner.invoke(app, ["tasks", "parse", "extraction", '{"value": "one"}', "--dir", str(TEMPLATES)])
    assert r.exit_code == 1 and "contract broken" in r.output
