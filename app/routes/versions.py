"""Admin: choose the version a model serves (pin, roll back). Every replica follows within its poll interval."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body
from starlette.concurrency import run_in_threadpool

from app.bodies import ActivateRequest, Activation
from app.core.errors import Conflict, VersionNotFound
from app.deps import JobStoreDep, RegistryDep
from app.http_errors import responses

router = APIRouter(prefix="/models", tags=["admin: versions"])  # admin-only: see app/routes/__init__.py


@router.post(
    "/{name}/versions/{version}/activate",
    response_model=Activation,
    responses=responses(VersionNotFound, Conflict),
)
async def activate_version(
    name: str,
    version: str,
    registry: RegistryDep,
    store: JobStoreDep,
    body: Annotated[ActivateRequest | None, Body()] = None,
) -> Activation:
    """Make `version` the model's current version. Pinned (the default), later jobs publish without
    taking over; `{"pin": false}` lets the next publication move on. The version is loaded and
    checked here first, so a broken one is never pointed at."""
    repository = registry.repository
    await run_in_threadpool(registry.require_servable, name, version)  # 404 unlisted, 409 unservable
    pin = body.pin if body is not None else True

    def switch() -> None:
        with store.model_lock(name):
            repository.write_pointer(name, version, pinned=pin)

    await run_in_threadpool(switch)
    registry.refused.discard((name, version))
    await run_in_threadpool(registry.refresh)  # this replica at once; the others at their next poll
    return Activation(model=name, version=version, pinned=pin)
