"""The job store's tables (SQLAlchemy Core), shared by the API and the training worker."""

from __future__ import annotations

from sqlalchemy import JSON, BigInteger, Boolean, Column, Float, Index, Integer, MetaData, String, Table, Text

metadata = MetaData()
# The counters of a rollout that every replica adds to (app/core/rollout.py RolloutCounts' integer fields).
ROLLOUT_COUNTS = ("candidate_requests", "candidate_errors", "shadowed", "agreed", "shadow_errors", "shadow_shed")

# Times are seconds since the epoch on the database's clock, never a host's: workers and replicas
# on different machines then agree on when a lease ran out.
jobs = Table(
    "pixelserve_jobs",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),  # increasing: newest first is id order
    Column("idempotency_key", String(200), unique=True, nullable=True),
    Column("model", String(100), nullable=False),
    Column("request", JSON, nullable=False),
    Column("status", String(16), nullable=False, index=True),
    Column("attempts", Integer, nullable=False, default=0),
    Column("worker_id", String(200), nullable=True),
    Column("lease_expires_at", Float, nullable=True),
    Column("cancel_requested", Boolean, nullable=False, default=False),
    Column("progress", JSON, nullable=True),
    Column("metrics", JSON, nullable=False),
    Column("version", String(20), nullable=True),
    Column("error", Text, nullable=True),
    Column("created_at", Float, nullable=False),
    Column("started_at", Float, nullable=True),
    Column("finished_at", Float, nullable=True),
)

# One row per model: publishers and admins lock it to move the model's CURRENT pointer.
model_locks = Table(
    "pixelserve_model_locks",
    metadata,
    Column("model", String(100), primary_key=True),
)

# Rollouts (app/core/rollout_ledger.py): every replica adds what it counted of a rollout, so an
# automatic rule judges the whole fleet's traffic; and each model's decisions, newest last.
rollout_counts = Table(
    "pixelserve_rollout_counts",
    metadata,
    Column("model", String(100), primary_key=True),
    Column("rollout_id", String(32), primary_key=True),
    *(Column(name, BigInteger, nullable=False, default=0) for name in ROLLOUT_COUNTS),
)
model_events = Table(
    "pixelserve_model_events",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("model", String(100), nullable=False, index=True),
    Column("at", Float, nullable=False),
    Column("action", String(32), nullable=False),  # rollout, aborted, promoted, published
    Column("by", String(200), nullable=False),
    Column("detail", JSON, nullable=False),
)
# Captured predictions (app/core/captures_store.py): the index; the pixels are PNG files on the
# shared volume (`file`, relative to the captures folder). Newest first is id order, as for jobs.
captures = Table(
    "pixelserve_captures",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("model", String(100), nullable=False),
    Column("version", String(20), nullable=False),
    Column("request_id", String(200), nullable=True),
    Column("created_at", Float, nullable=False),
    Column("prediction", String(100), nullable=False),
    Column("confidence", Float, nullable=False),
    Column("probabilities", JSON, nullable=False),
    Column("label", String(100), nullable=True),  # set by an admin; null: not labelled yet
    Column("file", String(300), nullable=False),
    Column("original", String(300), nullable=True),  # only with keep_originals
    Column("bytes", Integer, nullable=False),  # both files together: what retention counts
    Index("ix_pixelserve_captures_model_id", "model", "id"),
)
