"""Job endpoints: a teaching job's status (``GET /v1/jobs/{id}``), the key's jobs, cancelling one.

A key sees the jobs of the tasks it may use; cancelling needs the right to change the task (the
same admin lane as uploading examples). Unknown and foreign job ids are both 404, so ids cannot
be probed.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path

from services.deps import ApiKeyDep, CallDep, StateDep
from services.errors import api_error
from services.jobs.runner import Job
from services.jobs.schemas import JobStatus
from services.security import Principal
from services.state import ServiceState

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])
JobId = Annotated[str, Path(description="A job id from POST /v1/tasks/{name}/examples.", max_length=64)]


def _job(state: ServiceState, principal: Principal, job_id: str) -> Job:
    job = state.jobs.get(job_id)
    if job is None or not principal.may_run(job.task):
        raise api_error(404, "unknown_job", f"no job {job_id!r} (jobs are kept in memory: a restart forgets them)")
    return job


@router.get("", response_model=list[JobStatus], summary="Teaching jobs of the tasks this key may use, newest first")
def list_jobs(state: StateDep, principal: ApiKeyDep) -> list[dict[str, Any]]:
    return [j.snapshot() for j in state.jobs.list() if principal.may_run(j.task)]


@router.get("/{job_id}", response_model=JobStatus, summary="A job's state, phase, progress and result", responses={404: {}})
def get_job(job_id: JobId, state: StateDep, principal: ApiKeyDep) -> dict[str, Any]:
    return _job(state, principal, job_id).snapshot()


@router.delete("/{job_id}", response_model=JobStatus, summary="Cancel a queued or running job (what it made is removed)")
def cancel_job(job_id: JobId, state: StateDep, call: CallDep) -> dict[str, Any]:
    job = _job(state, call.principal, job_id)
    call.note(task=job.task)
    if not call.principal.may_change(job.task):
        raise api_error(403, "forbidden", f"key {call.principal.id!r} may not cancel jobs of task {job.task!r}")
    state.jobs.cancel(job_id)
    return job.snapshot()
