"""Admin: canary and shadow rollouts of a model's versions (app/core/rollout.py), promotion and abort.

A policy is written to the model repository and every replica applies it at its next poll (this one
at once). The versions it names are loaded and checked here first, so a broken one is never routed to.
"""

from __future__ import annotations

from fastapi import APIRouter
from starlette.concurrency import run_in_threadpool

from app.bodies import Promotion, RolloutApplied, RolloutView
from app.core import rollout_decisions
from app.core.errors import Conflict, ModelNotFound, NotReady, VersionNotFound
from app.core.job_store import JobStore
from app.core.registry import ModelRegistry
from app.core.rollout import RolloutPolicy
from app.core.rollout_ledger import RolloutLedger
from app.deps import JobStoreDep, RegistryDep
from app.http_errors import responses

router = APIRouter(prefix="/models", tags=["admin: rollouts"])  # admin-only: see app/routes/__init__.py


def _view(registry: ModelRegistry, store: JobStore, name: str) -> RolloutView:
    policy = registry.repository.read_rollout(name)
    active = registry.rollouts.get(name)
    applied = None
    if active is not None and policy is not None and active.policy.id == policy.id:
        applied = RolloutApplied(
            candidate_loaded=active.candidate is not None,
            shadow_loaded=active.shadow is not None,
            error=active.error,
        )
    ledger = RolloutLedger(store)
    served = registry.models.get(name)
    return RolloutView(
        model=name,
        served_version=served.version if served else None,
        rollout=policy,
        applied=applied,
        replica_counts=active.counts.summary() if applied and active else None,
        fleet_counts=ledger.totals(name, policy.id) if policy else None,
        history=ledger.history(name),
    )


@router.get("/{name}/rollout", response_model=RolloutView, responses=responses(ModelNotFound, NotReady))
async def get_rollout(name: str, registry: RegistryDep, store: JobStoreDep) -> RolloutView:
    """The policy, how this replica applies it, the counts that judge it (here and fleet-wide), the history."""
    registry.get(name)
    return await run_in_threadpool(_view, registry, store, name)


@router.put(
    "/{name}/rollout",
    response_model=RolloutView,
    responses=responses(ModelNotFound, NotReady, VersionNotFound, Conflict),
)
async def put_rollout(name: str, policy: RolloutPolicy, registry: RegistryDep, store: JobStoreDep) -> RolloutView:
    """Set the model's rollout: `candidate` with `weight` (a canary), `shadow` with `shadow_rate`, an `auto` rule.

    The whole policy is replaced, its counts start at zero. Each version must exist, load and pass its
    checks, and differ from the served version."""
    served = registry.get(name).version
    for version in filter(None, (policy.candidate, policy.shadow)):
        if version == served:
            raise Conflict(f"version {version} is the served version already")
        await run_in_threadpool(registry.require_servable, name, version)  # 404 unlisted, 409 unservable
    await run_in_threadpool(rollout_decisions.set_rollout, registry.repository, store, name, policy, "admin")
    await run_in_threadpool(registry.refresh)  # this replica at once; the others at their next poll
    return await run_in_threadpool(_view, registry, store, name)


@router.delete("/{name}/rollout", response_model=RolloutView, responses=responses(ModelNotFound, NotReady, Conflict))
async def abort_rollout(name: str, registry: RegistryDep, store: JobStoreDep) -> RolloutView:
    """Abort: the candidate and the shadow stop at every replica's next poll; the served version stays."""
    registry.get(name)
    aborted = await run_in_threadpool(
        rollout_decisions.abort, registry.repository, store, name, "admin", "aborted by an admin"
    )
    if aborted is None:
        raise Conflict(f"model {name!r:.80} has no rollout")
    await run_in_threadpool(registry.refresh)
    return await run_in_threadpool(_view, registry, store, name)


@router.post(
    "/{name}/rollout/promote", response_model=Promotion, responses=responses(ModelNotFound, NotReady, Conflict)
)
async def promote_rollout(name: str, registry: RegistryDep, store: JobStoreDep) -> Promotion:
    """Make the candidate (else the shadow) current, as a publication does, and end the rollout."""
    registry.get(name)
    promoted = await run_in_threadpool(
        rollout_decisions.promote, registry.repository, store, name, "admin", "promoted by an admin"
    )
    if promoted is None:
        raise Conflict(f"model {name!r:.80} has no rollout")
    version, pinned = promoted
    registry.refused.discard((name, version))
    await run_in_threadpool(registry.refresh)
    return Promotion(model=name, version=version, pinned=pinned)
