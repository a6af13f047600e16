"""The job store: SQLite (one host, no server) or PostgreSQL (replicas and workers on many hosts).

Claiming is atomic: PostgreSQL takes the oldest queued row with `FOR UPDATE SKIP LOCKED`; SQLite
runs every transaction as `BEGIN IMMEDIATE`, so writers queue on the database lock. A running job
holds a lease that its worker's heartbeat extends; `reap()` ends jobs whose lease ran out.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event, insert, select, text, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.pool import NullPool

from app.core.catalogue import FINISHED, JobStatus
from app.core.job_tables import jobs, metadata, model_locks

Job = dict[str, Any]
# Why a worker must stop a job (JobStore.stop_reason).
STOP_CANCELLED, STOP_LOST = "cancelled", "lost"


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        # NullPool: a fresh connection per use, safe across the worker's threads and forks.
        engine = create_engine(url, poolclass=NullPool, connect_args={"timeout": 60, "check_same_thread": False})

        @event.listens_for(engine, "connect")
        def _no_implicit_transactions(dbapi_connection: Any, _record: Any) -> None:
            dbapi_connection.isolation_level = None  # we issue BEGIN ourselves
            dbapi_connection.execute("PRAGMA journal_mode=WAL")

        @event.listens_for(engine, "begin")
        def _begin_immediate(connection: Connection) -> None:
            connection.exec_driver_sql("BEGIN IMMEDIATE")

        return engine
    return create_engine(url, pool_pre_ping=True)


class JobStore:
    def __init__(self, url: str) -> None:
        self.engine = make_engine(url)
        self.is_postgres = self.engine.dialect.name == "postgresql"
        # The id column is an Integer: PostgreSQL's int4 (SERIAL), SQLite's 64-bit INTEGER. A larger
        # id would overflow in the driver (a 500); no job can have it, so it is simply not found.
        self.max_id = 2**31 - 1 if self.is_postgres else 2**63 - 1
        with self.engine.begin() as conn:
            if self.is_postgres:  # concurrent first start-ups: one creates the schema, others wait
                conn.execute(text("SELECT pg_advisory_xact_lock(732001)"))
            metadata.create_all(conn)

    def now(self, conn: Connection) -> float:
        """Seconds since the epoch on the database server's clock."""
        if self.is_postgres:
            query = "SELECT extract(epoch from clock_timestamp())::float8"
        else:
            query = "SELECT (julianday('now') - 2440587.5) * 86400.0"
        return float(conn.exec_driver_sql(query).scalar_one())

    # --- API side -------------------------------------------------------------------------

    def create(self, model: str, request: dict[str, Any], idempotency_key: str | None = None) -> tuple[Job, bool]:
        """Queue a job; returns (job, created). A known idempotency key returns its job."""
        if idempotency_key is not None:
            existing = self._by_key(idempotency_key)
            if existing is not None:
                return existing, False
        try:
            with self.engine.begin() as conn:
                values: dict[str, Any] = {
                    "idempotency_key": idempotency_key,
                    "model": model,
                    "request": request,
                    "status": JobStatus.QUEUED,
                    "attempts": 0,
                    "cancel_requested": False,
                    "metrics": [],
                    "created_at": self.now(conn),
                }
                job_id = conn.execute(insert(jobs).values(**values).returning(jobs.c.id)).scalar_one()
        except IntegrityError:  # the same key raced in from another request
            existing = self._by_key(idempotency_key or "")
            if existing is None:
                raise
            return existing, False
        job = self.get(job_id)
        assert job is not None
        return job, True

    def _by_key(self, key: str) -> Job | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(jobs).where(jobs.c.idempotency_key == key)).mappings().first()
        return dict(row) if row else None

    def holds(self, job_id: int) -> bool:
        """Whether job_id is an id this store's column can hold (1 up to its integer's maximum)."""
        return 1 <= job_id <= self.max_id

    def get(self, job_id: int) -> Job | None:
        if not self.holds(job_id):
            return None
        with self.engine.connect() as conn:
            row = conn.execute(select(jobs).where(jobs.c.id == job_id)).mappings().first()
        return dict(row) if row else None

    def recent(self, limit: int = 100, model: str | None = None) -> list[Job]:
        query = select(jobs).order_by(jobs.c.id.desc()).limit(limit)
        if model is not None:
            query = query.where(jobs.c.model == model)
        with self.engine.connect() as conn:
            return [dict(row) for row in conn.execute(query).mappings()]

    def cancel(self, job_id: int) -> Job | None:
        """A queued job is cancelled at once; a running one is asked to stop at its next step."""
        if not self.holds(job_id):
            return None
        with self.engine.begin() as conn:
            now = self.now(conn)
            conn.execute(
                update(jobs)
                .where(jobs.c.id == job_id, jobs.c.status == JobStatus.QUEUED)
                .values(status=JobStatus.CANCELLED, finished_at=now, error="cancelled before it started")
            )
            conn.execute(
                update(jobs)
                .where(jobs.c.id == job_id, jobs.c.status == JobStatus.RUNNING)
                .values(cancel_requested=True)
            )
        return self.get(job_id)

    # --- worker side ----------------------------------------------------------------------

    def claim(self, worker_id: str, lease_seconds: float) -> Job | None:
        """Atomically take the oldest queued job, or None."""
        with self.engine.begin() as conn:
            query = select(jobs.c.id).where(jobs.c.status == JobStatus.QUEUED).order_by(jobs.c.id).limit(1)
            if self.is_postgres:
                query = query.with_for_update(skip_locked=True)
            job_id = conn.execute(query).scalar_one_or_none()
            if job_id is None:
                return None
            now = self.now(conn)
            conn.execute(
                update(jobs)
                .where(jobs.c.id == job_id, jobs.c.status == JobStatus.QUEUED)
                .values(
                    status=JobStatus.RUNNING,
                    worker_id=worker_id,
                    attempts=jobs.c.attempts + 1,
                    lease_expires_at=now + lease_seconds,
                    started_at=now,
                    error=None,
                )
            )
        return self.get(job_id)

    def heartbeat(self, job_id: int, worker_id: str, lease_seconds: float, progress: dict[str, Any] | None) -> bool:
        """Extend the lease (and record progress); False if this worker no longer owns the job."""
        with self.engine.begin() as conn:
            values: dict[str, Any] = {"lease_expires_at": self.now(conn) + lease_seconds}
            if progress is not None:
                values["progress"] = progress
            result = conn.execute(
                update(jobs)
                .where(jobs.c.id == job_id, jobs.c.worker_id == worker_id, jobs.c.status == JobStatus.RUNNING)
                .values(**values)
            )
        return result.rowcount == 1

    def cancel_requested(self, job_id: int) -> bool:
        with self.engine.connect() as conn:
            return bool(conn.execute(select(jobs.c.cancel_requested).where(jobs.c.id == job_id)).scalar_one())

    def stop_reason(self, job_id: int, worker_id: str, conn: Connection | None = None) -> str | None:
        """None while `worker_id` may go on with the job; else STOP_CANCELLED or STOP_LOST.

        Given model_lock's connection, the answer holds until that transaction ends: PostgreSQL
        locks the row (a concurrent cancel waits for the commit), SQLite's BEGIN IMMEDIATE already
        keeps every other writer out."""
        query = select(jobs.c.status, jobs.c.worker_id, jobs.c.cancel_requested).where(jobs.c.id == job_id)
        if conn is None:  # a poll: nothing to hold
            with self.engine.connect() as own:
                row = own.execute(query).first()
        else:
            row = conn.execute(query.with_for_update() if self.is_postgres else query).first()
        if row is None or row.status != JobStatus.RUNNING or row.worker_id != worker_id:
            return STOP_LOST
        return STOP_CANCELLED if row.cancel_requested else None

    def add_epoch(self, job_id: int, worker_id: str, metrics: dict[str, Any]) -> None:
        with self.engine.begin() as conn:
            current = conn.execute(select(jobs.c.metrics).where(jobs.c.id == job_id)).scalar_one()
            conn.execute(
                update(jobs)
                .where(jobs.c.id == job_id, jobs.c.worker_id == worker_id, jobs.c.status == JobStatus.RUNNING)
                .values(metrics=[*current, metrics])
            )

    def finish(
        self,
        job_id: int,
        worker_id: str,
        status: str,
        version: str | None = None,
        error: str | None = None,
        conn: Connection | None = None,
    ) -> bool:
        """Record the outcome; False if the job was reaped from this worker meanwhile. Given a
        connection (model_lock's), in that transaction: a publication and its job's end commit together."""
        assert status in FINISHED
        if conn is None:
            with self.engine.begin() as own:
                return self.finish(job_id, worker_id, status, version, error, own)
        result = conn.execute(
            update(jobs)
            .where(jobs.c.id == job_id, jobs.c.worker_id == worker_id, jobs.c.status == JobStatus.RUNNING)
            .values(status=status, version=version, error=error, finished_at=self.now(conn), lease_expires_at=None)
        )
        return result.rowcount == 1

    def reap(self, max_attempts: int) -> list[int]:
        """Jobs whose worker stopped heartbeating: requeued while attempts remain, else interrupted."""
        with self.engine.begin() as conn:
            now = self.now(conn)
            query = select(jobs.c.id, jobs.c.attempts, jobs.c.cancel_requested).where(
                jobs.c.status == JobStatus.RUNNING, jobs.c.lease_expires_at < now
            )
            if self.is_postgres:
                query = query.with_for_update(skip_locked=True)
            expired = conn.execute(query).all()
            for job_id, attempts, cancel_requested in expired:
                values: dict[str, Any]
                if attempts < max_attempts and not cancel_requested:
                    values = {"status": JobStatus.QUEUED, "worker_id": None, "lease_expires_at": None}
                else:
                    values = {
                        "status": JobStatus.INTERRUPTED,
                        "finished_at": now,
                        "lease_expires_at": None,
                        "error": f"worker lost (no heartbeat) after {attempts} attempt(s)",
                    }
                conn.execute(
                    update(jobs).where(jobs.c.id == job_id, jobs.c.status == JobStatus.RUNNING).values(**values)
                )
        return [row[0] for row in expired]

    @contextmanager
    def model_lock(self, model: str) -> Iterator[Connection]:
        """Serialise moves of one model's CURRENT pointer across every host that shares this store.

        Yields the lock's connection: checks and writes made on it (stop_reason, finish) commit or
        roll back together with the lock's transaction."""
        with self.engine.begin() as conn:
            if self.is_postgres:
                conn.execute(
                    text("INSERT INTO pixelserve_model_locks (model) VALUES (:m) ON CONFLICT DO NOTHING"), {"m": model}
                )
                conn.execute(select(model_locks).where(model_locks.c.model == model).with_for_update())
            else:  # BEGIN IMMEDIATE already holds SQLite's write lock for this transaction
                conn.execute(text("INSERT OR IGNORE INTO pixelserve_model_locks (model) VALUES (:m)"), {"m": model})
            yield conn
