"""Overload control's verdict and bookkeeping: latency must not grow without bound past saturation.

A request is shed (503, `Overloaded`) when the queue holds too many images, or when the queueing
delay is past a target: the oldest request in flight has waited longer, or the queued images
times the measured cost of one image would take longer (CoDel's idea: bound the time spent queued,
not only the count). The edge (app/shed_early.py) asks before reading a body, so shedding costs
little more than reading it; the route asks again with the request's real image count.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from typing import Any

from app.core import metrics
from app.core.settings import OverloadPolicy


class Admission:
    def __init__(self) -> None:
        self.shed: Counter[str] = Counter()  # reason -> requests shed or dropped unrun since start-up
        self._lock = threading.Lock()
        # Event-loop side: each small request from its route's start until its route has the answer,
        # oldest first (dicts keep insertion order). Under overload the time goes to the event loop's
        # ready queue (each request passes it at its start and again after its answer), not only to
        # the batching queue: the oldest of these is the process's queueing delay (CoDel's sojourn).
        self._in_flight: dict[asyncio.Future[Any], float] = {}

    def verdict(
        self, policy: OverloadPolicy, queued: int, images: int, seconds_per_image: float, threads: int
    ) -> tuple[str, str] | None:
        """(reason, message) when `images` more would be shed now (queue_full, queue_delay), else None: O(1)."""
        if queued + images > policy.max_queued_images:
            return "queue_full", f"{queued} images are queued in this process (at most {policy.max_queued_images})"
        oldest = next(iter(self._in_flight.values()), None)
        waited = time.monotonic() - oldest if oldest is not None else 0.0
        delay = max(waited, queued * seconds_per_image / threads)
        if delay > policy.max_queue_delay_s:
            target_ms = policy.max_queue_delay_s * 1000
            return "queue_delay", f"the queue is {delay * 1000:.0f} ms long in this process (target {target_ms:.0f} ms)"
        return None

    def record(self, reason: str) -> None:
        """queue_full, queue_delay (503 at admission), deadline (504 unrun), disconnected (dropped unrun),
        optional (a shadow run not queued)."""
        with self._lock:
            self.shed[reason] += 1
        metrics.request_shed(reason)

    def started(self, future: asyncio.Future[Any], at: float) -> None:
        self._in_flight[future] = at

    def finished(self, future: asyncio.Future[Any]) -> None:
        self._in_flight.pop(future, None)
