"""Rollout decisions: set a policy, abort it, promote its version, or let the automatic rule decide.

Every decision moves files of the model repository (ROLLOUT, CURRENT) under the job store's
per-model lock, the one publications and activations take, and is recorded in the model's history
in that same transaction. Promotion is the publication protocol's pointer swap: CURRENT names the
version on trial (keeping its pinned flag) and ROLLOUT goes, so every replica moves at its next poll.
"""

from __future__ import annotations

import logging

from app.core.job_store import JobStore
from app.core.registry import ModelRegistry
from app.core.repository import ModelRepository
from app.core.rollout import ActiveRollout, RolloutPolicy, StoredRollout
from app.core.rollout_ledger import RolloutLedger

logger = logging.getLogger("pixelserve.rollout")


def set_rollout(
    repository: ModelRepository, store: JobStore, name: str, policy: RolloutPolicy, by: str
) -> StoredRollout:
    stored = StoredRollout.of(policy, by)
    with store.model_lock(name) as conn:
        repository.write_rollout(name, stored)
        RolloutLedger(store).record(conn, name, "rollout", by, stored.model_dump())
    logger.info("model %s: rollout set by %s: %s", name, by, policy.model_dump(exclude_none=True))
    return stored


def abort(
    repository: ModelRepository, store: JobStore, name: str, by: str, why: str, rollout_id: str | None = None
) -> StoredRollout | None:
    """Remove the rollout (the one with `rollout_id`, if given); None when there was none (or another)."""
    with store.model_lock(name) as conn:
        current = repository.read_rollout(name)
        if current is None or (rollout_id is not None and current.id != rollout_id):
            return None
        repository.write_rollout(name, None)
        RolloutLedger(store).record(conn, name, "aborted", by, {"rollout": current.model_dump(), "why": why})
    logger.info("model %s: rollout %s aborted by %s: %s", name, current.id, by, why)
    return current


def promote(
    repository: ModelRepository, store: JobStore, name: str, by: str, why: str, rollout_id: str | None = None
) -> tuple[str, bool] | None:
    """Make the version on trial (the candidate, else the shadow) current: (version, pinned); None: no rollout."""
    with store.model_lock(name) as conn:
        current = repository.read_rollout(name)
        if current is None or (rollout_id is not None and current.id != rollout_id):
            return None
        version = current.on_trial
        _, pinned = repository.read_pointer(name)
        repository.write_pointer(name, version, pinned)
        repository.write_rollout(name, None)
        detail = {"version": version, "rollout": current.model_dump(), "why": why}
        RolloutLedger(store).record(conn, name, "promoted", by, detail)
    logger.info("model %s: version %s promoted by %s: %s", name, version, by, why)
    return version, pinned


def verdict(rollout: StoredRollout, totals: dict[str, int]) -> tuple[bool, str] | None:
    """The automatic rule's (promote?, why) once enough traffic was seen; None before that or without a rule."""
    rule = rollout.auto
    if rule is None:
        return None
    shadowed = rollout.shadow is not None
    seen = totals["shadowed"] if shadowed else totals["candidate_requests"]
    if seen < rule.min_requests:
        return None
    errors = totals["shadow_errors"] + totals["candidate_errors"]
    if errors:
        return False, f"{errors} errors in {seen} requests"
    if not shadowed:
        return True, f"{seen} candidate requests without an error"
    agreement = totals["agreed"] / seen
    if agreement < rule.min_agreement:
        return False, f"agreement {agreement:.4f} over {seen} images is below {rule.min_agreement}"
    return True, f"agreement {agreement:.4f} over {seen} images, no errors"


def upkeep(registry: ModelRegistry, store: JobStore | None) -> None:
    """At each poll: add this replica's counts to the fleet's, and apply automatic rules that can decide."""
    if store is None:  # no job store (a serving-only replica): counts stay local, nothing is decided here
        return
    ledger = RolloutLedger(store)
    for name, active in list(registry.rollouts.items()):
        ledger.add(name, active.policy.id, active.take_pending())
        _decide(registry.repository, store, ledger, name, active)


def _decide(
    repository: ModelRepository, store: JobStore, ledger: RolloutLedger, name: str, active: ActiveRollout
) -> None:
    decision = verdict(active.policy, ledger.totals(name, active.policy.id))
    if decision is None:
        return
    promoted, why = decision
    if promoted:
        promote(repository, store, name, "auto", why, rollout_id=active.policy.id)
    else:
        abort(repository, store, name, "auto", why, rollout_id=active.policy.id)
