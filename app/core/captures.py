"""Capturing what users send: the per-model policy and the hand-off from the event loop to one writer.

`PIXELSERVE_CAPTURE` (JSON, model name -> CapturePolicy) turns capture on per model; it is off for
every model not named. The predict route calls `Capturer.offer` right after computing its answer,
on the event loop: offer only decides (one random draw and one max per image) and puts what it
keeps on a bounded queue. It never waits: past `PIXELSERVE_CAPTURE_QUEUE` images it drops and
counts (pixelserve_captures_total{outcome="dropped"}), so a slow disk or database costs captures,
never a request. One writer thread drains the queue in batches into the CaptureStore
(app/core/captures_store.py), which writes the files and the index and enforces retention.
"""

from __future__ import annotations

import logging
import queue
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, StrictBool

from app.core import metrics
from app.core.captures_store import CaptureStore, NewCapture

logger = logging.getLogger("pixelserve.captures")
WRITE_BATCH = 64  # captures written per database transaction at most
# The writer gathers captures this long after the first of a batch: a commit (an fsync on SQLite and
# PostgreSQL) per capture cost the serving process more than the rest of capturing together.
BATCH_WINDOW_S = 0.05
# Retention is checked at most this often per model (two queries): the bound may be passed by at
# most one interval's captures, for a moment.
RETENTION_INTERVAL_S = 1.0


class CapturePolicy(BaseModel):
    """What to capture of one model's predictions, and how much of it to keep."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    rate: float = Field(0.0, ge=0, le=1, description="share of images captured at random (0: none, 1: all)")
    below_confidence: float | None = Field(
        None, ge=0, le=1, description="images whose confidence is below this are always captured"
    )
    keep_originals: StrictBool = Field(False, description="also keep the uploaded file as sent (off: never kept)")
    max_count: int = Field(10_000, ge=1, le=100_000, description="captures kept per model; the oldest go first")
    max_bytes: int = Field(
        100 * 1024 * 1024, ge=4096, le=2**40, description="bytes of files kept per model; the oldest go first"
    )


@dataclass(frozen=True)
class _Offered:
    model: str
    version: str
    pixels: np.ndarray  # float32 [28, 28] in [0, 1]: a view of the request's kept input
    row: list[float]
    labels: list[str]
    request_id: str | None
    original: bytes | None
    at: float


class Capturer:
    """The per-process capture hand-off: `offer` on the event loop, one writer thread behind it."""

    def __init__(
        self,
        store: CaptureStore,
        policies: dict[str, CapturePolicy],
        queue_size: int,
        draw: Callable[[], float] = random.random,
    ) -> None:
        self.store, self.policies, self._draw = store, policies, draw
        self._queue: queue.Queue[_Offered | None] = queue.Queue(maxsize=queue_size)
        # Models written to since their last retention check; all of them at first, so a policy
        # tightened since the last start is applied within a second of it, captures or not.
        self._unretained: set[str] = set(policies)
        self._retained_at = float("-inf")
        self._writer = threading.Thread(target=self._write_loop, name="capture-writer", daemon=True)
        self._writer.start()

    def wants(self, model: str) -> bool:
        return model in self.policies

    def keeps_originals(self, model: str) -> bool:
        policy = self.policies.get(model)
        return policy is not None and policy.keep_originals

    def offer(
        self,
        model: str,
        version: str,
        pixels: np.ndarray,  # float32 [k, 28, 28] in [0, 1]
        rows: list[list[float]],  # [k, C] probabilities
        labels: list[str],
        request_id: str | None,
        originals: list[bytes] | None,
    ) -> None:
        """Capture the images the model's policy picks. Never blocks or raises: a full queue drops."""
        try:
            policy = self.policies.get(model)
            if policy is None:
                return
            below = policy.below_confidence
            now = time.time()
            for i, row in enumerate(rows):
                if not ((below is not None and max(row) < below) or self._draw() < policy.rate):
                    continue
                original = originals[i] if originals is not None and policy.keep_originals else None
                item = _Offered(model, version, pixels[i], row, labels, request_id, original, now)
                try:
                    self._queue.put_nowait(item)
                except queue.Full:
                    metrics.captured(model, "dropped")
        except Exception:  # capturing must never fail a request
            logger.exception("capture offer failed")
            metrics.captured(model, "failed")

    def close(self, timeout: float = 10.0) -> None:
        """Write what is queued (at most `timeout` seconds: a dead database must not hang shutdown)."""
        try:
            self._queue.put(None, timeout=timeout)
        except queue.Full:
            logger.warning("capture queue still full at shutdown; its captures are lost")
            return
        self._writer.join(timeout)

    def _write_loop(self) -> None:
        stopping = False
        while not stopping:
            try:  # idle with captures unchecked: wake up to check their retention
                first = self._queue.get(timeout=RETENTION_INTERVAL_S if self._unretained else None)
            except queue.Empty:
                self._retain()
                continue
            batch = [] if first is None else [first]
            stopping = first is None
            closes_at = time.monotonic() + BATCH_WINDOW_S
            while not stopping and len(batch) < WRITE_BATCH:
                try:
                    item = self._queue.get(timeout=max(0.0, closes_at - time.monotonic()))
                except queue.Empty:
                    break
                if item is None:
                    stopping = True
                else:
                    batch.append(item)
            if batch:
                self._write(batch)
            self._retain(force=stopping)

    def _write(self, batch: list[_Offered]) -> None:
        captures = [
            NewCapture(o.model, o.version, o.pixels, o.row, o.labels, o.request_id, o.original, o.at) for o in batch
        ]
        try:
            written = self.store.add(captures)
        except Exception:  # a database or disk error loses this batch, not the writer
            logger.exception("writing %d captures failed", len(batch))
            for item in batch:
                metrics.captured(item.model, "failed")
            time.sleep(0.5)  # a database that is down: do not spin
            return
        for item in batch:
            metrics.captured(item.model, "stored")
            self._unretained.add(item.model)
        logger.debug("wrote captures %s", written)

    def _retain(self, force: bool = False) -> None:
        """Retention of the models written to since the last check, at most every RETENTION_INTERVAL_S."""
        if not self._unretained or (not force and time.monotonic() < self._retained_at + RETENTION_INTERVAL_S):
            return
        self._retained_at = time.monotonic()
        models, self._unretained = self._unretained, set()
        for model in models:
            policy = self.policies[model]
            try:
                evicted = self.store.enforce_retention(model, policy.max_count, policy.max_bytes)
            except Exception:
                logger.exception("capture retention of %s failed", model)
                continue
            if evicted:
                metrics.captured(model, "evicted", evicted)
