"""``domain-lm tasks train`` through the CLI: locally (the tiny model scores every system; no adapter,
so it runs in seconds) and against a running service (an in-process app behind a real HTTP port)."""

from __future__ import annotations

import json
import shutil
import threading
import time

from typer.testing import CliRunner

from domain_lm.cli import app
from domain_lm.data import embedded

from .conftest import REPO

runner = CliRunner()
MAP = json.dumps({"bearish": "negative", "bullish": "positive"})


def tweets_csv(path, n=60):
    rows = embedded.records("twitter_fin_sentiment/sentiment")[::13][:n]
    path.write_text("tweet,label\n" + "\n".join('"{}",{}'.format(r["text"].replace('"', '""'), r["label"]) for r in rows))
    return path


def train_args(data, *extra: str) -> list[str]:
    """``domain-lm tasks train sentiment`` on the tweets file, mapped to the template, plus ``extra``."""
    return ["tasks", "train", "sentiment", "--data", str(data), "--fields", '{"text": "tweet"}', "--label-map", MAP, *extra]


def test_train_locally_writes_a_version_and_prints_the_comparison(tmp_path, tiny_model_dir):
    templates = tmp_path / "task_templates"
    shutil.copytree(REPO / "task_templates", templates)
    data = tweets_csv(tmp_path / "tweets.csv")
    args = train_args(data, "--no-adapter", "--model", str(tiny_model_dir), "--dir", str(templates),
                      "--set", "max_eval=12", "--set", "n_boot=100")
    r = runner.invoke(app, args, env={"COLUMNS": "200"})
    assert r.exit_code == 0, r.output
    assert "zero_shot" in r.output and "few_shot" in r.output and "classical" in r.output and "serving" in r.output
    assert (templates / ".versions" / "adapters" / "sentiment" / "1" / "report.json").is_file()
    bad = runner.invoke(app, ["tasks", "train", "sentiment", "--data", str(data), "--model", str(tiny_model_dir), "--dir", str(templates)])
    assert bad.exit_code != 0 and "no column for the input(s) ['text']" in bad.output


def test_train_against_a_running_service(tmp_path):
    import uvicorn

    from domain_lm.inference.fake import FakeEngine
    from services.app import create_app
    from services.security import hash_key
    from services.settings import ServiceSettings

    from .test_teach_api import fake_train

    templates = tmp_path / "task_templates"
    shutil.copytree(REPO / "task_templates", templates)
    settings = ServiceSettings(api_keys=f"ops:{hash_key('cli-admin')}:*:admin", templates_dir=str(templates), template_reload_interval_s=0)
    service = create_app(settings, engine=FakeEngine(model_name="fake"))
    service.state.service.train_adapter = fake_train
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(service, host="127.0.0.1", port=port, log_config=None))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    try:
        data = tweets_csv(tmp_path / "tweets.csv")
        base = train_args(data, "--url", f"http://127.0.0.1:{port}")
        r = runner.invoke(app, [*base, "--key", "cli-admin"], env={"COLUMNS": "200"})
        assert r.exit_code == 0, r.output
        assert "succeeded" in r.output and "adapter" in r.output and "engine: auto" in r.output
        denied = runner.invoke(app, [*base, "--key", "wrong"])
        assert denied.exit_code != 0 and "(401)" in str(denied.exception)
    finally:
        server.should_exit = True
        thread.join(timeout=10)
