"""What a prediction route does with an answer besides sending it: shadow runs and captures.

Both need the preprocessed inputs, which the batcher does not return: a route keeps them (`keeping`)
only when one of the two will use them, and schedules the work as the response's background task,
which Starlette runs after the last byte is sent. The task itself only hands work off (a queued
shadow run, a bounded capture queue) and returns: the connection's next request never waits on it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from starlette.background import BackgroundTask

from app.core.artifacts import LoadedModel
from app.core.batch_work import Probabilities
from app.core.rollout import ActiveRollout


def keeping(prepare: Callable[[], np.ndarray], kept: list[np.ndarray]) -> np.ndarray:
    """`prepare`, keeping the [k, 28, 28] input it hands the batcher (run once, on a batching thread)."""
    pixels = prepare()
    kept.append(pixels)
    return pixels


def wants_inputs(state: Any, model: LoadedModel, rollout: ActiveRollout | None) -> bool:
    """Whether anything after the answer needs this request's inputs: a shadow, or capture of this model."""
    if rollout is not None and rollout.shadow is not None:
        return True
    capturer = state.capturer
    return capturer is not None and bool(capturer.wants(model.name))


def follow_up(
    state: Any,
    model: LoadedModel,
    rollout: ActiveRollout | None,
    kept: list[np.ndarray],
    rows: Probabilities,
    request_id: str | None,
    uploads: list[bytes] | None = None,
) -> BackgroundTask | None:
    """The background task of a response: queue the shadow run and offer the capture, or None for neither."""
    capturer = state.capturer
    capture = capturer is not None and capturer.wants(model.name)
    shadow = rollout is not None and rollout.shadow is not None
    if not kept or not (shadow or capture):  # kept for include_input alone: nothing to do after the answer
        return None
    pixels = kept[0]
    originals = uploads if capture and uploads is not None and capturer.keeps_originals(model.name) else None

    async def hand_off() -> None:  # async: run on the event loop, not in a thread
        if shadow and rollout is not None:
            state.shadows.run(rollout, model, pixels, rows)
        if capture:
            capturer.offer(model.name, model.version, pixels, rows, model.labels, request_id, originals)

    return BackgroundTask(hand_off)
