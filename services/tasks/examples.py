"""Teaching a task while serving: check an upload of labelled examples, then queue its job.

Everything about the file is checked before anything runs, in this order: the key may change the
task (403), teaching is on (409), the task exists (404), the body is within ``max_body_bytes``
(413, by the middleware) and ``max_upload_rows`` (413), it parses (422 naming the line), every row
maps onto the template's inputs and labels (422 listing the rows, or skip them with
``skip_invalid``), and the examples split into usable train and held-out sides (422). Only then is
the job queued (429 when the queue is full, 409 when a job of the task is already queued or
running); the answer is 202 with the job id. The job itself is ``domain_lm.train.teach.teach``,
with training in a child process and the adapter loaded into the running engine.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from domain_lm.config import TaskDataset
from domain_lm.errors import DataError
from domain_lm.tasks import TaskTemplate
from domain_lm.tasks.adapter_store import TaskVersion
from domain_lm.train.task_adapter import Format, ParsedUpload, TeachConfig, parse_examples, read_rows
from domain_lm.train.teach import TeachJob, report_summary, split_examples, teach
from services.errors import api_error
from services.handler import Call
from services.jobs.runner import Job, JobConflict, JobQueueFull
from services.tasks.handler import TaskHandler
from services.tasks.schemas import ExamplesAccepted

log = logging.getLogger(__name__)

_FORMATS = {"text/csv": "csv", "application/json": "json"}


def upload_format(fmt: str | None, content_type: str | None) -> Format:
    """The ``format`` parameter, else from the Content-Type (CSV, JSON), else JSON lines."""
    if fmt:
        return fmt  # type: ignore[return-value]
    base = (content_type or "").split(";")[0].strip().lower()
    return _FORMATS.get(base, "jsonl")  # type: ignore[return-value]


def upload_mapping(
    name: str, fields: str | None, label_field: str, label_map: str | None, group_field: str | None, lang: str
) -> TaskDataset:
    """The configs' dataset mapping from query parameters (``fields`` and ``label_map`` as JSON objects)."""
    parsed: dict[str, Any] = {}
    for key, raw in (("fields", fields), ("label_map", label_map)):
        if raw:
            try:
                value = json.loads(raw)
            except json.JSONDecodeError:
                raise api_error(422, "invalid_input", f"{key} must be a JSON object of strings", field=key) from None
            if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
                raise api_error(422, "invalid_input", f"{key} must be a JSON object of strings", field=key)
            parsed[key] = value
    try:
        return TaskDataset(task=name, path="upload", label_field=label_field, group_field=group_field, lang=lang, **parsed)
    except ValueError as e:
        raise api_error(422, "invalid_input", str(e).splitlines()[0], field="lang") from None


class ExamplesHandler(TaskHandler):
    def _teachable(self, call: Call, name: str) -> TaskTemplate:
        if not call.principal.may_change(name):
            raise api_error(403, "forbidden", f"key {call.principal.id!r} may not teach task {name!r} (needs an admin key for it)")
        if self.state.adapter_store is None:
            raise api_error(
                409,
                "read_only",
                "teaching is off: the service has no writable task store (start it with --template-store DIR or "
                "--adapter-store DIR, and without --no-teach)",
            )
        return self.template(call.principal, name)

    def _parse(self, t: TaskTemplate, data: bytes, fmt: Format, mapping: TaskDataset, skip_invalid: bool) -> ParsedUpload:
        try:
            rows = read_rows(data, fmt)
        except DataError as e:
            raise api_error(422, "invalid_file", str(e)) from None
        if len(rows) > self.settings.max_upload_rows:
            raise api_error(
                413, "too_many_rows", f"the file has {len(rows)} examples; an upload may hold at most {self.settings.max_upload_rows}"
            )
        parsed = parse_examples(t, rows, mapping)
        if parsed.problem_count and (not skip_invalid or not parsed.records):
            raise api_error(
                422,
                "invalid_examples",
                f"{parsed.problem_count} of {parsed.rows} rows cannot be used (fix them, or pass skip_invalid=true to leave them out)",
                problems=[{"row": r, "message": m} for r, m in parsed.problems],
            )
        return parsed

    async def upload(
        self, call: Call, name: str, data: bytes, fmt: Format, mapping: TaskDataset, skip_invalid: bool, adapter: bool
    ) -> ExamplesAccepted:
        call.note(task=name)
        t = self._teachable(call, name)
        self.engine  # noqa: B018 - 503 while the engine loads: the job needs it
        cfg = self.state.teach_config.model_copy(update={"adapter": adapter})

        def prepare() -> tuple[ParsedUpload, tuple[list, list, int]]:  # parsing and hashing thousands of rows: off the loop
            parsed = self._parse(t, data, fmt, mapping, skip_invalid)
            try:
                return parsed, split_examples(t, parsed.records, cfg)
            except DataError as e:
                raise api_error(422, "invalid_examples", str(e)) from None

        parsed, (train, held, dups) = await asyncio.to_thread(prepare)
        try:
            job = self.state.jobs.submit(name, call.principal.id, call.scope.get("dlm_request_id"), self._work(t, parsed.records, cfg))
        except JobQueueFull as e:
            raise api_error(429, "queue_full", str(e), headers={"Retry-After": "30"}) from None
        except JobConflict as e:
            raise api_error(409, "job_running", str(e)) from None
        return ExamplesAccepted(
            task=name,
            job=job.id,
            status_url=f"/v1/jobs/{job.id}",
            examples=len(parsed.records),
            train=len(train),
            held_out=len(held),
            duplicates=dups,
            skipped=parsed.problem_count,
            adapter=adapter,
        )

    def _work(self, t: TaskTemplate, records: list, cfg: TeachConfig):
        """The job body, run by a worker thread: ``teach`` with this service's engine and store."""
        state = self.state

        def work(job: Job) -> dict[str, Any]:
            def refreshed(version: TaskVersion) -> None:
                job.version = version.version
                state.taught.refresh(t.name, version)
                state.taught.warm(t)

            engine = state.engine
            if engine is None or not state.ready():
                raise DataError("the engine is not ready")
            teach_job = TeachJob(
                template=t,
                records=records,
                store=state.adapter_store,  # type: ignore[arg-type]
                model_path=str(state.settings.model or getattr(engine, "model_path", "")),
                engine=engine,
                config=cfg,
                job_id=job.id,
                author=job.author,
                request_id=job.request_id,
                progress=job.update,
                cancelled=job.cancel,
                train=state.train_adapter,
                on_version=refreshed,
            )
            report = teach(teach_job)
            return {**report_summary(report), "serving": state.taught.summary(state.registry.get(t.name), engine.adapters)}

        return work
