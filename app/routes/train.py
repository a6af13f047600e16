"""Admin: training jobs. The API only queues and reports; a separate worker process trains."""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Response

from app.bodies import JobView, TrainRequest, job_view
from app.core.catalogue import FINISHED, JobStatus
from app.core.errors import Conflict, JobNotFound
from app.deps import JobStoreDep, SettingsDep
from app.http_errors import responses

router = APIRouter(prefix="/train", tags=["admin: training"])  # admin-only: see app/routes/__init__.py


@router.post(
    "",
    status_code=202,
    response_model=JobView,
    responses={
        200: {"model": JobView, "description": "an earlier job with this idempotency key and the same body"},
        **responses(Conflict),
    },
)
def start_training(
    body: TrainRequest,
    store: JobStoreDep,
    response: Response,
    idempotency_key: Annotated[str | None, Header(max_length=200)] = None,
) -> JobView:
    """Queue a training job: 202 with its id and a Location header.

    A repeated idempotency key (header or body) with the same body returns the first job, with
    200; with a different body it is refused with 409, as payment APIs do: the client reused a
    key by mistake, and answering with a job it did not ask for would hide that."""
    request = body.model_dump(exclude={"idempotency_key"})
    key = idempotency_key or body.idempotency_key
    job, created = store.create(body.model, request, key)
    if not created and _normalised(job["request"]) != _normalised(request):
        raise Conflict(f"idempotency key {key!r} was used for job {job['id']} with a different request body")
    response.headers["Location"] = f"/train/{job['id']}"
    if not created:
        response.status_code = 200
    return job_view(job)


def _normalised(request: dict[str, Any]) -> Any:
    """The request as the store holds it (JSON), so a float or tuple compares as it was stored."""
    return json.loads(json.dumps(request, sort_keys=True))


@router.get("", response_model=list[JobView])
def list_jobs(
    store: JobStoreDep,
    settings: SettingsDep,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    model: str | None = None,
) -> list[JobView]:
    """Jobs, newest first."""
    store.reap(settings.job_max_attempts)  # a job whose worker died shows as such even with no worker left
    return [job_view(job) for job in store.recent(limit, model)]


@router.get("/{job_id}", response_model=JobView, responses=responses(JobNotFound))
def get_job(job_id: int, store: JobStoreDep, settings: SettingsDep) -> JobView:
    """Status, progress, per-epoch metrics, timestamps, published version or error."""
    store.reap(settings.job_max_attempts)
    job = store.get(job_id)
    if job is None:
        raise JobNotFound(f"no training job {job_id}")
    return job_view(job)


@router.post("/{job_id}/cancel", response_model=JobView, responses=responses(JobNotFound, Conflict))
def cancel_job(job_id: int, store: JobStoreDep) -> JobView:
    """Cancel a queued job now, or ask a running one to stop at its next step (cancel_requested)."""
    before = store.get(job_id)
    if before is None:
        raise JobNotFound(f"no training job {job_id}")
    if before["status"] in FINISHED:
        raise Conflict(f"job {job_id} already ended: {before['status']}")
    job = store.cancel(job_id)
    assert job is not None
    if job["status"] != JobStatus.CANCELLED and not job["cancel_requested"]:  # it ended (published) meanwhile
        raise Conflict(f"job {job_id} already ended: {job['status']}")
    return job_view(job)
