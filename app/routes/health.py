"""Liveness and readiness probes for load balancers and orchestrators."""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel

from app.core.errors import NotReady
from app.deps import DrainerDep, RegistryDep
from app.http_errors import responses

router = APIRouter(prefix="/health", tags=["health"])


class Health(BaseModel):
    status: str
    models: dict[str, str] = {}


@router.get("/live", response_model=Health)
async def live() -> Health:
    """200 while the process runs."""
    return Health(status="live")


@router.get("/ready", response_model=Health, responses=responses(NotReady))
async def ready(registry: RegistryDep, drainer: DrainerDep) -> Health:
    """200 once every configured model is loaded; 503 before, when one failed to load, or while draining."""
    models = {name: model.version for name, model in registry.models.items()}
    if drainer.draining.is_set():
        raise NotReady("draining: shutting down after SIGTERM")
    if (reason := registry.not_ready_reason()) is not None:
        raise NotReady(f"not ready: {reason}")
    return Health(status="ready", models=models)
