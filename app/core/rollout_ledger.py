"""Rollouts in the job store: the fleet's counts per rollout, and each model's history of decisions.

Replicas add what they counted since their last poll (RolloutCounts.pending) to one row per
(model, rollout id), so an automatic rule judges every replica's traffic, not one replica's share.
Decisions (a policy set, aborted, promoted, published as a canary) are rows of the model's history,
written in the same transaction as the file they change (JobStore.model_lock's connection).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, insert, select, update
from sqlalchemy.exc import IntegrityError

from app.core.job_store import JobStore
from app.core.job_tables import ROLLOUT_COUNTS, model_events, rollout_counts
from app.core.rollout import RolloutCounts


class RolloutLedger:
    def __init__(self, store: JobStore) -> None:
        self.store = store

    def add(self, model: str, rollout_id: str, counts: RolloutCounts) -> None:
        """Add one replica's counts to the fleet's (an upsert that works on SQLite and PostgreSQL alike)."""
        deltas = {name: getattr(counts, name) for name in ROLLOUT_COUNTS}
        if not any(deltas.values()):
            return
        where = (rollout_counts.c.model == model, rollout_counts.c.rollout_id == rollout_id)
        increments = {name: getattr(rollout_counts.c, name) + delta for name, delta in deltas.items()}
        for _ in range(2):  # a concurrent first insert of the same row: then the update finds it
            try:
                with self.store.engine.begin() as conn:
                    if conn.execute(update(rollout_counts).where(*where).values(**increments)).rowcount == 0:
                        conn.execute(insert(rollout_counts).values(model=model, rollout_id=rollout_id, **deltas))
                return
            except IntegrityError:
                continue

    def totals(self, model: str, rollout_id: str) -> dict[str, int]:
        query = select(*(getattr(rollout_counts.c, name) for name in ROLLOUT_COUNTS)).where(
            rollout_counts.c.model == model, rollout_counts.c.rollout_id == rollout_id
        )
        with self.store.engine.connect() as conn:
            row = conn.execute(query).first()
        return {name: int(row[i]) if row else 0 for i, name in enumerate(ROLLOUT_COUNTS)}

    def record(self, conn: Connection, model: str, action: str, by: str, detail: dict[str, Any]) -> None:
        """One decision in the model's history, on the caller's transaction."""
        conn.execute(
            insert(model_events).values(model=model, at=self.store.now(conn), action=action, by=by, detail=detail)
        )

    def history(self, model: str, limit: int = 50) -> list[dict[str, Any]]:
        """The model's latest decisions, oldest first."""
        query = select(model_events).where(model_events.c.model == model).order_by(model_events.c.id.desc())
        with self.store.engine.connect() as conn:
            rows = [dict(row) for row in conn.execute(query.limit(limit)).mappings()]
        return [{key: row[key] for key in ("at", "action", "by", "detail")} for row in reversed(rows)]
