"""Adaptive batching: concurrent requests for one model version share one forward pass.

A request becomes a work item: a `prepare` callable (decode + the model's recipe, or an OIP
tensor's conversion) and a future. A small pool of inference threads (one by default) takes the
oldest item, gathers the queued items of the same model *version* (never two versions in one
batch) up to `max_batch_size` images, and waits for more at most `max_delay_ms` after the first,
and only while other requests are still being received: at concurrency 1 nothing ever waits.
It prepares each item on its own (a bad image fails only its own request), runs the model once,
and resolves the futures of each event loop with one callback.

A request whose images are costly to decode (`heavy`: many pixels, app/core/upload_cost.py) is first
prepared in the large-image lane, one thread of its own, and joins the queue as plain pixels: a big
upload then delays other big uploads, never the forward passes of everyone else's small ones.

Overload: latency must not grow without bound past saturation. `admit` sheds a request (503,
`Overloaded`) when the queue holds too many images, or when the queueing delay is past a target:
the oldest queued request has waited longer, or the queued images times the measured cost of one
image would take longer (CoDel's idea: bound the time spent queued, not only the count). A queued
request past its deadline is answered `DeadlineExceeded` (504), and one whose future was cancelled
(the route saw its client disconnect) is dropped; neither is decoded nor run.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial

import numpy as np
import torch

from app.core import metrics
from app.core.artifacts import LoadedModel
from app.core.errors import DeadlineExceeded, Overloaded
from app.core.inference import run_model
from app.core.settings import BatchPolicy, OverloadPolicy

logger = logging.getLogger("pixelserve.batching")

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
class _Work:
    model: LoadedModel
    prepare: Prepare
    images: int  # how many images the request holds (known before decoding: one per file)
    future: asyncio.Future[Probabilities]
    loop: asyncio.AbstractEventLoop
    enqueued: float
    result: Probabilities | BaseException | None = None
    deadline: float = math.inf  # time.monotonic() past which it is dropped unrun (504)


def _given(pixels: np.ndarray) -> np.ndarray:
    return pixels


def _reraise(exc: BaseException) -> np.ndarray:
    raise exc


def _resolve(batch: list[_Work]) -> None:
    """On the event loop: hand each request its answer (unless its client has gone)."""
    for work in batch:
        if work.future.done():
            continue
        if isinstance(work.result, BaseException):
            work.future.set_exception(work.result)
        else:
            work.future.set_result(work.result or [])


class Batcher:
    def __init__(
        self, policy_for: Callable[[str], BatchPolicy], threads: int = 1, torch_threads: int | None = None
    ) -> None:
        # torch's intra-op thread count is per OS thread under OpenMP: a new inference thread would
        # run its first forward pass with the default count and the rest with the configured one,
        # and the two sum in different orders (answers 1e-7 apart for the same image).
        self._torch_threads = torch_threads
        self._policy_for = policy_for
        self._queue: deque[_Work] = deque()
        self._cond = threading.Condition()
        self._arriving = 0  # requests being received: worth waiting for
        self._waiting = False
        self._closing = False
        self.counters: dict[str, BatchCounters] = {}
        self._counters_lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, name=f"inference-{i}", daemon=True) for i in range(threads)]
        # One thread: heavy requests queue behind each other here, and take at most one core from the rest.
        self._lane = ThreadPoolExecutor(max_workers=1, thread_name_prefix="large-images")
        self.lane_requests = 0  # requests prepared in the lane since start-up
        # Admission state, under self._cond: images submitted and not yet taken (the lane's too),
        # and the inference threads' measured seconds per image (moving average), for `admit`.
        self._images_queued = 0
        self._seconds_per_image = 0.0
        self.shed: Counter[str] = Counter()  # reason -> requests shed or dropped unrun since start-up
        # Event-loop side: each small request from its route's start until its route has the answer,
        # oldest first (dicts keep insertion order). Under overload the time goes to the event loop's
        # ready queue (each request passes it at its start and again after its answer), not only to
        # the batching queue: the oldest of these is the process's queueing delay (CoDel's sojourn).
        self._in_flight: dict[asyncio.Future[Probabilities], float] = {}
        for thread in self._threads:
            thread.start()

    def policy(self, name: str) -> BatchPolicy:
        return self._policy_for(name)

    # -- event-loop side ------------------------------------------------------------------------

    @contextmanager
    def receiving(self) -> Iterator[None]:
        """Around reading a request and submitting it: meanwhile, batches may wait for it."""
        with self._cond:
            self._arriving += 1
        try:
            yield
        finally:
            with self._cond:
                self._arriving -= 1
                if self._waiting and self._arriving == 0:
                    self._cond.notify_all()

    @property
    def queued_images(self) -> int:
        """Images submitted and not yet taken into a forward pass (the large-image lane's included)."""
        with self._cond:
            return self._images_queued

    def pressure(self, policy: OverloadPolicy, images: int = 1) -> tuple[str, str] | None:
        """(reason, message) when `images` more would be shed now (queue_full, queue_delay), else None.

        O(1). The edge (app/shed_early.py) asks it before reading a body, so shedding costs little
        more than reading it; `admit` asks again with the request's real image count."""
        queued = self._images_queued
        if queued + images > policy.max_queued_images:
            return "queue_full", f"{queued} images are queued in this process (at most {policy.max_queued_images})"
        oldest = next(iter(self._in_flight.values()), None)
        waited = time.monotonic() - oldest if oldest is not None else 0.0
        delay = max(waited, queued * self._seconds_per_image / len(self._threads))
        if delay > policy.max_queue_delay_s:
            target_ms = policy.max_queue_delay_s * 1000
            return "queue_delay", f"the queue is {delay * 1000:.0f} ms long in this process (target {target_ms:.0f} ms)"
        return None

    def shed_early(self, reason: str) -> None:
        """Count a request the edge shed for `reason` (see `pressure`)."""
        self._shed(reason)

    def admit(self, images: int, policy: OverloadPolicy) -> None:
        """Raise `Overloaded` when `images` more would queue too many or wait too long: cheap, O(1)."""
        with self._cond:
            verdict = self.pressure(policy, images)
        if verdict is not None:
            self._shed(verdict[0])
            raise Overloaded(verdict[1])

    def _shed(self, reason: str) -> None:
        """queue_full, queue_delay (503 at admission), deadline (504 unrun), disconnected (dropped unrun)."""
        with self._counters_lock:
            self.shed[reason] += 1
        metrics.request_shed(reason)

    def submit(
        self,
        model: LoadedModel,
        prepare: Prepare,
        images: int = 1,
        heavy: bool = False,
        deadline: float = math.inf,
        started: float | None = None,
    ) -> asyncio.Future[Probabilities]:
        """Queue a request; `heavy`: run `prepare` in the large-image lane first, then queue its pixels.

        Unrun at `deadline` (time.monotonic()), it is answered DeadlineExceeded; cancel the future
        (its client went away) and it is dropped unrun. `started`: when its request arrived; it
        counts as in flight (see `admit`) until `finished` (a heavy request never: it is slow by design)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Probabilities] = loop.create_future()
        work = _Work(model, prepare, images, future, loop, time.monotonic(), deadline=deadline)
        if heavy:
            with self._cond:
                if self._closing:
                    raise RuntimeError("the batcher is shut down")
                self._images_queued += images
            self._lane.submit(self._prepare_in_lane, work)
        else:
            self._enqueue(work, count=True)
            if started is not None:
                self._in_flight[future] = started
        metrics.track_in_flight(future, images)
        return future

    def finished(self, future: asyncio.Future[Probabilities]) -> None:
        """On the event loop: the route has its answer (or gave up): no longer in flight."""
        self._in_flight.pop(future, None)

    def refused(self, model: LoadedModel) -> None:
        """A request refused before it was queued (from its images' headers: too large, not an image): a failure."""
        with self._counters_lock:
            self.counters.setdefault(model.name, BatchCounters()).record(1, 0, 1)

    def _enqueue(self, work: _Work, count: bool = False) -> None:
        with self._cond:
            if self._closing:
                raise RuntimeError("the batcher is shut down")
            if count:
                self._images_queued += work.images
            self._queue.append(work)
            metrics.enqueued(work.images)
            self._cond.notify()

    def _prepare_in_lane(self, work: _Work) -> None:
        """In the lane thread: decode, then queue the pixels (or the error, so it is counted as any failure)."""
        with self._counters_lock:
            self.lane_requests += 1
        if self._drop_if_gone(work, time.monotonic()):  # never decode for nobody
            with self._cond:
                self._images_queued -= work.images
            self._hand_back([work])
            return
        try:
            ready = partial(_given, work.prepare())
        except Exception as exc:  # its own 4xx (or 500), raised again by the inference thread
            ready = partial(_reraise, exc)
        work.prepare, work.enqueued = ready, time.monotonic()
        self._enqueue(work)

    def close(self) -> None:
        """Finish what is queued, then stop the threads."""
        self._lane.shutdown(wait=True)  # first: what the lane finishes still joins the queue
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        for thread in self._threads:
            thread.join()

    # -- inference threads ----------------------------------------------------------------------

    def _queued_images(self, model: LoadedModel) -> int:
        return sum(work.images for work in self._queue if work.model is model)

    def _next_batch(self) -> list[_Work] | None:
        with self._cond:
            while not self._queue:
                if self._closing:
                    return None
                self._cond.wait()
            head = self._queue[0]
            policy = self._policy_for(head.model.name)
            deadline = head.enqueued + policy.max_delay_ms / 1000
            while (
                self._arriving > 0
                and not self._closing
                and self._queued_images(head.model) < policy.max_batch_size
                and (remaining := deadline - time.monotonic()) > 0
            ):
                self._waiting = True
                self._cond.wait(remaining)
            self._waiting = False
            batch: list[_Work] = []
            gone: list[_Work] = []
            rest: deque[_Work] = deque()
            images = 0
            now = time.monotonic()
            for work in self._queue:
                if self._drop_if_gone(work, now):
                    gone.append(work)
                # Same model object = same version; a request bigger than a batch goes alone.
                elif work.model is head.model and (not batch or images + work.images <= policy.max_batch_size):
                    batch.append(work)
                    images += work.images
                else:
                    rest.append(work)
            self._queue = rest
            metrics.queue_left(sum(work.images for work in rest))
            self._images_queued -= images + sum(work.images for work in gone)
            self._hand_back(gone)
            return batch  # empty when every request of head's model was gone

    def _drop_if_gone(self, work: _Work, now: float) -> bool:
        """Past its deadline (answered 504) or cancelled by its route (client gone): never prepared nor run."""
        if now > work.deadline:  # first: the route also cancels a future at its deadline
            waited = now - work.enqueued
            work.result = DeadlineExceeded(f"the request waited {waited:.3f} s in the queue, past its deadline")
            self._shed("deadline")
            return True
        if work.future.cancelled():  # read across threads: a flag, set once on the loop
            self._shed("disconnected")
            return True
        return False

    def _hand_back(self, works: list[_Work]) -> None:
        """Resolve each request's future on its own event loop, one callback per loop."""
        by_loop: dict[asyncio.AbstractEventLoop, list[_Work]] = {}
        for work in works:
            by_loop.setdefault(work.loop, []).append(work)
        for loop, batch in by_loop.items():
            with contextlib.suppress(RuntimeError):  # that loop has closed: nobody is waiting
                loop.call_soon_threadsafe(_resolve, batch)

    def _measure(self, batch: list[_Work], seconds: float) -> None:
        """The moving average of one image's cost (prepare + forward, as the GIL is shared now), for `admit`."""
        images = sum(work.images for work in batch)
        with self._cond:
            previous = self._seconds_per_image
            now = seconds / images
            self._seconds_per_image = now if previous == 0 else 0.8 * previous + 0.2 * now

    def _run(self) -> None:
        if self._torch_threads is not None:
            torch.set_num_threads(self._torch_threads)
        while (batch := self._next_batch()) is not None:
            if not batch:
                continue
            started = time.monotonic()
            try:
                self._execute(batch)
            except BaseException as exc:  # never lose a request: whatever broke, each one hears of it
                logger.exception("batch failed")
                for work in batch:
                    if work.result is None:
                        work.result = exc
            self._measure(batch, time.monotonic() - started)
            self._hand_back(batch)

    def _execute(self, batch: list[_Work]) -> None:
        model = batch[0].model
        metrics.taken(model.name, [work.enqueued for work in batch])
        ready: list[tuple[_Work, np.ndarray]] = []
        for work in batch:
            try:
                pixels = work.prepare()  # [k, 28, 28]
            except Exception as exc:  # its own 4xx (or 500); the rest of the batch goes on
                work.result = exc
                continue
            ready.append((work, pixels))
        images = sum(pixels.shape[0] for _, pixels in ready)
        if ready:
            stacked = ready[0][1] if len(ready) == 1 else np.concatenate([p for _, p in ready])  # [B, 28, 28]
            forward_started = time.perf_counter()
            probabilities = run_model(model, stacked)  # [B, C]
            metrics.forward_pass(model.name, stacked.shape[0], time.perf_counter() - forward_started)
            start = 0
            for work, pixels in ready:
                work.result = probabilities[start : start + pixels.shape[0]]
                start += pixels.shape[0]
        with self._counters_lock:
            self.counters.setdefault(model.name, BatchCounters()).record(len(batch), images, len(batch) - len(ready))
        if logger.isEnabledFor(logging.DEBUG):
            waited_ms = (time.monotonic() - batch[0].enqueued) * 1000
            logger.debug(
                "batch model=%s version=%s requests=%d images=%d failed=%d oldest_ms=%.2f",
                model.name,
                model.version,
                len(batch),
                images,
                len(batch) - len(ready),
                waited_ms,
            )
