"""What the batcher moves around: a request's work item, its answer's type, and batching counters."""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from app.core.artifacts import LoadedModel

Probabilities = list[list[float]]  # [k, C] for one request's k images
Prepare = Callable[[], np.ndarray]  # -> float32 [k, 28, 28] in [0, 1]; raises PixelserveError on bad input


@dataclass
class BatchCounters:
    """What batching did for one model since start-up: GET /models/{name} shows it."""

    requests: int = 0
    images: int = 0
    batches: int = 0
    failed_requests: int = 0
    sizes: Counter[int] = field(default_factory=Counter)  # images per forward pass -> passes

    def record(self, requests: int, images: int, failed: int) -> None:
        self.requests += requests
        self.failed_requests += failed
        if images:
            self.images += images
            self.batches += 1
            self.sizes[images] += 1

    def to_json(self) -> dict[str, object]:
        return {
            "requests": self.requests,
            "images": self.images,
            "forward_passes": self.batches,
            "failed_requests": self.failed_requests,
            "mean_batch_size": round(self.images / self.batches, 3) if self.batches else None,
            "batch_sizes": {str(size): count for size, count in sorted(self.sizes.items())},
        }


@dataclass
class Work:
    model: LoadedModel
    prepare: Prepare
    images: int  # how many images the request holds (known before decoding: one per file)
    future: asyncio.Future[Probabilities]
    loop: asyncio.AbstractEventLoop
    enqueued: float
    result: Probabilities | BaseException | None = None
    deadline: float = math.inf  # time.monotonic() past which it is dropped unrun (504)


def given(pixels: np.ndarray) -> np.ndarray:
    return pixels


def reraise(exc: BaseException) -> np.ndarray:
    raise exc


def resolve(batch: list[Work]) -> None:
    """On the event loop: hand each request its answer (unless its client has gone)."""
    for work in batch:
        if work.future.done():
            continue
        if isinstance(work.result, BaseException):
            work.future.set_exception(work.result)
        else:
            work.future.set_result(work.result or [])


def hand_back(works: list[Work]) -> None:
    """Resolve each request's future on its own event loop, one callback per loop."""
    by_loop: dict[asyncio.AbstractEventLoop, list[Work]] = {}
    for work in works:
        by_loop.setdefault(work.loop, []).append(work)
    for loop, batch in by_loop.items():
        with contextlib.suppress(RuntimeError):  # that loop has closed: nobody is waiting
            loop.call_soon_threadsafe(resolve, batch)
