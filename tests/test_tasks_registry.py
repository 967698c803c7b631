"""Template registry: versions, run-time registration, persistence, reload without restart."""

from __future__ import annotations

import os
import shutil
import threading

import pytest

from domain_lm.tasks import TemplateError, TemplateErrors, TemplateRegistry, UnknownTaskError
from tests.tasks_fixtures import MINI, TEMPLATES, line_of, mini


@pytest.fixture()
def tdir(tmp_path):
    d = tmp_path / "task_templates"
    shutil.copytree(TEMPLATES, d, ignore=shutil.ignore_patterns(".versions"))
    return d


def _touch_later(path):
    """Make sure an edit is visible to the mtime scan even on coarse-mtime filesystems."""
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 2_000_000_000))


def test_register_new_version_keeps_old_and_persists(tdir):
    reg = TemplateRegistry.load(tdir)
    v1 = reg.get("sentiment")
    text = (tdir / "sentiment.yaml").read_text(encoding="utf-8")
    new_text = text.replace("version: 1\n", "").replace("Answer with exactly one word.", "Answer with one word only.")
    v2 = reg.register(new_text)
    assert (v2.version, reg.get("sentiment").version, reg.versions("sentiment")) == (2, 2, [1, 2])
    assert reg.get("sentiment", 1) is v1 and v1.prompts["en"].system.endswith("exactly one word.")
    assert reg.get("sentiment").render_messages({"text": "x"})[0]["content"].endswith("one word only.")
    # Files: the authored file is never edited; the new version is one immutable file in the store
    # (by default .versions/), with who registered it on top and the author's comments kept.
    assert (tdir / "sentiment.yaml").read_text(encoding="utf-8") == text
    stored = (tdir / ".versions" / "sentiment@2.yaml").read_text(encoding="utf-8")
    assert stored.startswith("# registered by api at ") and "version: 2" in stored and "# Sentiment" in stored
    assert [e["version"] for e in reg.store.audit_entries()] == [2]
    again = TemplateRegistry.load(tdir)
    assert again.versions("sentiment") == [1, 2] and again.get("sentiment").fingerprint == v2.fingerprint
    assert again.get("sentiment", 1).fingerprint == v1.fingerprint
    assert not list(tdir.glob(".*.tmp*")) and not list((tdir / ".versions").glob(".*"))  # atomic writes left nothing


def test_register_rejects_stale_version_and_is_idempotent(tdir):
    reg = TemplateRegistry.load(tdir)
    text = (tdir / "sentiment.yaml").read_text(encoding="utf-8")
    assert reg.register(text) is reg.get("sentiment")  # same template, same version: no-op
    assert reg.versions("sentiment") == [1]
    changed = text.replace("Answer with exactly one word.", "Be brief.")
    with pytest.raises(TemplateError, match="at version 1; a new template must have a higher version") as e:
        reg.register(changed)
    assert e.value.line == line_of(changed, "version: 1")
    assert reg.register(changed.replace("version: 1", "version: 5")).version == 5
    with pytest.raises(TemplateError):
        reg.register(changed.replace("version: 1", "version: 3"))
    assert reg.versions("sentiment") == [1, 5]


def test_register_new_task_without_persist_dir():
    reg = TemplateRegistry()
    t = reg.register(MINI.replace("version: 1\n", ""))
    assert (t.name, t.version, reg.names()) == ("mini", 1, ["mini"])
    with pytest.raises(UnknownTaskError, match="unknown task 'nope'; known tasks: mini"):
        reg.get("nope")
    with pytest.raises(UnknownTaskError):
        reg.get("mini", 2)
    with pytest.raises(TemplateError, match="needs `max_length`"):
        reg.register(
            mini(**{"  kind: label": "  kind: text"})
            .replace("  labels: [approve, reject]\n", "")
            .replace("  display:\n    zh: {approve: 批准, reject: 拒绝}\n", "")
        )
    assert reg.versions("mini") == [1]


def test_reload_picks_up_changes_and_survives_broken_files(tdir):
    reg = TemplateRegistry.load(tdir)
    assert reg.reload_if_changed() is False
    # A new file appears.
    (tdir / "mini.yaml").write_text(MINI, encoding="utf-8")
    assert reg.reload_if_changed() is True and "mini" in reg.names()
    # An edit with a version bump.
    path = tdir / "business_line.yaml"
    good = path.read_text(encoding="utf-8")
    path.write_text(good.replace("version: 1", "version: 2").replace("or neither", "or something else"), encoding="utf-8")
    _touch_later(path)
    assert reg.reload_if_changed() is True
    assert reg.get("business_line").version == 2 and reg.versions("business_line") == [1, 2]
    # A broken edit: reported with file:line; the last good version keeps being served.
    broken = good.replace("version: 1", "version: 3").replace("  kind: label", "  kind: labels")
    path.write_text(broken, encoding="utf-8")
    _touch_later(path)
    assert reg.reload_if_changed() is True
    assert reg.get("business_line").version == 2 and len(reg) == 8
    (err,) = reg.errors
    assert err.file == str(path) and err.line == line_of(broken, "kind: labels")
    # A file removed: the task disappears from the listing.
    (tdir / "mini.yaml").unlink()
    assert reg.reload_if_changed() is True and "mini" not in reg.names()
    # Fixed again: errors clear.
    path.write_text(good.replace("version: 1", "version: 3"), encoding="utf-8")
    _touch_later(path)
    assert reg.reload_if_changed() is True and reg.errors == () and reg.get("business_line").version == 3


def test_strict_load_reports_every_broken_file(tdir):
    (tdir / "mini.yaml").write_text(mini(**{"  kind: label": "  kind: nope"}), encoding="utf-8")
    (tdir / "other.yaml").write_text(MINI, encoding="utf-8")  # name inside says mini
    with pytest.raises(TemplateErrors) as e:
        TemplateRegistry.load(tdir)
    msgs = sorted(str(x) for x in e.value.errors)
    assert len(msgs) == 2
    assert msgs[0].startswith(f"{tdir / 'mini.yaml'}:{line_of(MINI, 'kind: label')}:")
    assert msgs[1].startswith(f"{tdir / 'other.yaml'}:1: file name must be mini.yaml")
    lenient = TemplateRegistry.load(tdir, strict=False)
    assert len(lenient) == 7 and len(lenient.errors) == 2
    with pytest.raises(TemplateError, match="does not exist"):
        TemplateRegistry.load(tdir / "missing")


def test_concurrent_registration_gives_distinct_versions(tdir):
    reg = TemplateRegistry.load(tdir)
    text = (tdir / "sentiment.yaml").read_text(encoding="utf-8").replace("version: 1\n", "")
    got, seen = [], []

    def writer(i: int) -> None:
        got.append(reg.register(text.replace("Answer with exactly one word.", f"Answer in one word ({i}).")).version)

    def reader() -> None:
        for _ in range(200):
            t = reg.get("sentiment")
            seen.append((t.version, t.render_messages({"text": "x"})[0]["content"]))

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(6)] + [threading.Thread(target=reader) for _ in range(2)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert sorted(got) == [2, 3, 4, 5, 6, 7]
    assert reg.versions("sentiment") == [1, 2, 3, 4, 5, 6, 7]
    # Every read saw one consistent version (its own system prompt), never a half-updated template.
    for version, system in seen:
        assert system == reg.get("sentiment", version).render_messages({"text": "x"})[0]["content"]
    assert TemplateRegistry.load(tdir).versions("sentiment") == [1, 2, 3, 4, 5, 6, 7]
