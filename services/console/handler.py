"""The console's own work: checking and dry-running drafts, and what a key may see of runs.

Drafts are hostile input like any PUT body: each is checked in the sandboxed checker process
first (time and memory budget), then compiled off the event loop. A dry run uses the model like
any request, through ``guarded`` (one slot per answered example, the timeout, error mapping).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from domain_lm.tasks import TaskTemplate, TemplateError
from services.console import editor, runs
from services.errors import api_error
from services.handler import Handler
from services.security import Principal


class ConsoleHandler(Handler):
    async def _parse(self, text: str) -> TaskTemplate:
        """The template a draft would register as (``TemplateError`` with its line when refused)."""
        await self.state.checker.check(text)
        return await asyncio.to_thread(editor.parse_draft, text, self.registry)

    async def check(self, text: str) -> dict[str, Any]:
        try:
            return editor.accepted(await self._parse(text), self.registry)
        except TemplateError as e:
            return editor.refused(e)

    async def dry_run(self, text: str, lang: str, inputs: dict[str, Any] | None, variant: int) -> dict[str, Any]:
        try:
            template = await self._parse(text)
        except TemplateError as e:
            return {**editor.refused(e), "items": []}
        result = editor.accepted(template, self.registry)
        if lang not in template.languages:
            problem = {"message": f"the draft has no language {lang!r} (it has {', '.join(template.languages)})", "line": None}
            return {**result, "ok": False, "errors": [problem], "items": []}
        engine = self.state.engine if self.state.ready() else None
        n = 1 if inputs is not None else min(len(template.examples_for(lang)), editor.MAX_DRY_RUN_EXAMPLES)
        async with self.guarded(max(1, n) if engine is not None else 0):
            items = await editor.dry_run(template, engine, lang, inputs, variant)
        return {**result, "engine": engine is not None, "items": items}

    # ------------------------------------------------------------------ runs, in the key's lane

    @staticmethod
    def scoped_detail(detail: dict[str, Any], principal: Principal) -> dict[str, Any]:
        """A run as a task-scoped key may see it: its tasks' evaluation rows, no cross-task metrics."""
        if principal.all_tasks:
            return detail
        tables = []
        for table in detail["eval"]:
            rows = [r for r in table["rows"] if principal.may_run(r["task"])]
            if rows:
                tables.append({**table, "rows": rows})
        stages = [{**s, "metrics": {}} for s in detail["stages"]]
        return {**detail, "stages": stages, "eval": tables, "has_report": False}

    @staticmethod
    def report(runs_dir: Path, name: str, principal: Principal) -> Path:
        """The run's report.html, which covers every task: only for keys not scoped to some tasks."""
        if not principal.all_tasks:
            raise api_error(403, "forbidden", f"key {principal.id!r} is limited to some tasks; the full report covers all of them")
        try:
            return runs.report_file(runs_dir, name)
        except runs.RunNotFound as e:
            raise api_error(404, "no_report", str(e)) from None
