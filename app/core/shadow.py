"""Shadow runs and per-version bookkeeping: what happens after a request has its answer.

A shadow version runs on the very inputs the answering version saw (the preprocessed [k, 28, 28]
pixels, not the upload again), queued after the answer is sent and as optional work: the batcher
admits it only while the queue is under half its bound and half its delay target, so under load
shadow runs are shed (and counted) before any request is. Its result never reaches a client: it is
compared with the answer (same label or not), and both versions' confidence and latency are counted
per rollout (app/core/rollout.py) and in Prometheus (app/core/metrics.py).
"""

from __future__ import annotations

import asyncio
import time
from functools import partial

import numpy as np

from app.core import metrics
from app.core.artifacts import LoadedModel
from app.core.batch_work import Probabilities, given
from app.core.batching import Batcher
from app.core.errors import DeadlineExceeded, Overloaded
from app.core.rollout import ActiveRollout
from app.core.settings import OverloadPolicy


def top(rows: Probabilities) -> tuple[list[int], list[float]]:
    """Each row's label index and confidence."""
    labels = [max(range(len(row)), key=row.__getitem__) for row in rows]
    return labels, [row[label] for row, label in zip(rows, labels, strict=True)]


def record_answer(
    model: LoadedModel, role: str, rollout: ActiveRollout | None, rows: Probabilities, started: float
) -> None:
    """Every answer, by the version and role that computed it (a canary's share is compared this way)."""
    _, confidences = top(rows)
    seconds = time.monotonic() - started
    metrics.version_answered(model.name, model.version, role, confidences, seconds)
    if rollout is not None:
        rollout.answered(role, confidences, seconds)
        if role == "candidate":
            rollout.count("candidate_requests")


class ShadowRunner:
    def __init__(self, batcher: Batcher, overload: OverloadPolicy, timeout_s: float) -> None:
        self.batcher = batcher
        self.overload = overload
        self.timeout_s = timeout_s

    def run(self, rollout: ActiveRollout, answered: LoadedModel, pixels: np.ndarray, rows: Probabilities) -> None:
        """On the event loop, after the answer: queue the shadow on `pixels` ([k, 28, 28]) if sampled and admitted."""
        shadow = rollout.shadow_for(answered)
        if shadow is None:
            return
        images = len(rows)
        if not self.batcher.admits_optional(images, self.overload):
            rollout.count("shadow_shed", images)
            metrics.shadow_compared(answered.name, answered.version, shadow.version, "shed", images)
            return
        started = time.monotonic()
        future = self.batcher.submit(shadow, partial(given, pixels), images, deadline=started + self.timeout_s)
        future.add_done_callback(partial(self._compare, rollout, answered, shadow, rows, started))

    @staticmethod
    def _compare(
        rollout: ActiveRollout,
        answered: LoadedModel,
        shadow: LoadedModel,
        rows: Probabilities,
        started: float,
        future: asyncio.Future[Probabilities],
    ) -> None:
        if future.cancelled():  # shut down meanwhile
            return
        name, images = answered.name, len(rows)
        if (exc := future.exception()) is not None:
            shed = isinstance(exc, DeadlineExceeded | Overloaded)  # load, not the version's fault
            rollout.count("shadow_shed" if shed else "shadow_errors", images)
            metrics.shadow_compared(name, answered.version, shadow.version, "shed" if shed else "error", images)
            return
        labels, _ = top(rows)
        shadow_rows = future.result()
        shadow_labels, confidences = top(shadow_rows)
        agreed = sum(a == b for a, b in zip(labels, shadow_labels, strict=True))
        rollout.count("shadowed", images)
        rollout.count("agreed", agreed)
        seconds = time.monotonic() - started
        rollout.answered("shadow", confidences, seconds)
        metrics.version_answered(name, shadow.version, "shadow", confidences, seconds)
        if agreed:
            metrics.shadow_compared(name, answered.version, shadow.version, "agree", agreed)
        if images - agreed:
            metrics.shadow_compared(name, answered.version, shadow.version, "disagree", images - agreed)
