"""Response model of the job endpoints."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


class JobStatus(BaseModel):
    """A teaching job. ``state``: queued -> running -> succeeded | failed | cancelled; while running,
    ``phase`` says what it does (preparing, classical, training, loading, evaluating, serving,
    comparing) and ``progress`` how far that phase is (0..1, null when unknown)."""

    id: str
    task: str
    author: str
    state: str
    phase: str
    progress: float | None
    message: str
    created_at: float
    started_at: float | None
    finished_at: float | None
    serving_at: float | None = Field(None, description="When the new version started answering the task.")
    upload_to_serving_s: float | None = None
    wall_s: float
    version: int | None = Field(None, description="The task-store version the job made (adapter <task>@<version>).")
    error: str | None
    result: dict[str, Any] | None = Field(None, description="Scores of each system on the held-out examples, and what serves.")
