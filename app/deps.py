"""Dependency aliases shared by the routers.

Every dependency is `async def`: they only read app state, and FastAPI runs a plain `def`
dependency in its thread pool, a thread hop per dependency per request.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Header, Request

from app.admin_gate import admin_refusal
from app.core.batching import Batcher
from app.core.drain import Drainer
from app.core.errors import Forbidden
from app.core.job_store import JobStore
from app.core.registry import ModelRegistry
from app.core.settings import Settings


async def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def get_registry(request: Request) -> ModelRegistry:
    registry: ModelRegistry = request.app.state.registry
    return registry


async def get_batcher(request: Request) -> Batcher:
    batcher: Batcher = request.app.state.batcher
    return batcher


async def get_drainer(request: Request) -> Drainer:
    drainer: Drainer = request.app.state.drainer
    return drainer


SettingsDep = Annotated[Settings, Depends(get_settings)]
DrainerDep = Annotated[Drainer, Depends(get_drainer)]
BatcherDep = Annotated[Batcher, Depends(get_batcher)]
RegistryDep = Annotated[ModelRegistry, Depends(get_registry)]


async def get_job_store(request: Request) -> JobStore:
    store: JobStore | None = request.app.state.job_store
    if store is None:  # only when no admin token is set, which require_admin refuses first
        raise Forbidden("admin routes are disabled: the server has no PIXELSERVE_ADMIN_TOKEN")
    return store


JobStoreDep = Annotated[JobStore, Depends(get_job_store)]


async def require_admin(settings: SettingsDep, authorization: Annotated[str | None, Header()] = None) -> None:
    """Router-level guard of every admin route (AdminGate has already checked, before the body)."""
    if (refusal := admin_refusal(settings, authorization)) is not None:
        raise refusal
