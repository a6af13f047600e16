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

Overload (app/core/admission.py): `admit` sheds a request (503) past the queue's bound or delay
target. A queued request past its deadline is answered `DeadlineExceeded` (504), and one whose
future was cancelled (its client disconnected) is dropped; neither is decoded nor run.
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from functools import partial

import numpy as np

from app.core import metrics
from app.core.admission import Admission
from app.core.artifacts import LoadedModel
from app.core.batch_work import BatchCounters, Prepare, Probabilities, Work, given, hand_back, reraise
from app.core.devices import set_torch_threads
from app.core.errors import DeadlineExceeded, Overloaded
from app.core.inference import run_model
from app.core.settings import BatchPolicy, OverloadPolicy

logger = logging.getLogger("pixelserve.batching")
COLD_PASSES = 3  # forward passes after start-up left out of the measured cost per image


class Batcher:
    def __init__(
        self, policy_for: Callable[[str], BatchPolicy], threads: int = 1, torch_threads: int | None = None
    ) -> None:
        # torch's intra-op thread count is per OS thread under OpenMP: a new inference thread would
        # run its first forward pass with the default count and the rest with the configured one,
        # and the two sum in different orders (answers 1e-7 apart for the same image).
        self._torch_threads = torch_threads
        self._policy_for = policy_for
        self._queue: deque[Work] = deque()
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
        self._passes_seen = 0
        self._admission = Admission()
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
        """(reason, message) when `images` more would be shed now, else None (app/core/admission.py)."""
        return self._admission.verdict(policy, self._images_queued, images, self._seconds_per_image, len(self._threads))

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

    def admits_optional(self, images: int, policy: OverloadPolicy) -> bool:
        """Whether optional work (a shadow run) may queue `images` now. It gets half the queue bound and half
        the delay target, so as load grows it is shed (counted as `optional`) well before any request is."""
        half = OverloadPolicy(max(1, policy.max_queued_images // 2), policy.max_queue_delay_s / 2)
        with self._cond:
            verdict = self.pressure(half, images)
        if verdict is not None:
            self._shed("optional")
        return verdict is None

    def _shed(self, reason: str) -> None:
        self._admission.record(reason)

    @property
    def shed(self) -> Counter[str]:
        """Reason -> requests shed or dropped unrun since start-up."""
        return self._admission.shed

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
        work = Work(model, prepare, images, future, loop, time.monotonic(), deadline=deadline)
        if heavy:
            with self._cond:
                if self._closing:
                    raise RuntimeError("the batcher is shut down")
                self._images_queued += images
            self._lane.submit(self._prepare_in_lane, work)
        else:
            self._enqueue(work, count=True)
            if started is not None:
                self._admission.started(future, started)
        metrics.track_in_flight(future, images)
        return future

    def finished(self, future: asyncio.Future[Probabilities]) -> None:
        """On the event loop: the route has its answer (or gave up): no longer in flight."""
        self._admission.finished(future)

    def refused(self, model: LoadedModel) -> None:
        """A request refused before it was queued (from its images' headers: too large, not an image): a failure."""
        with self._counters_lock:
            self.counters.setdefault(model.name, BatchCounters()).record(1, 0, 1)

    def _enqueue(self, work: Work, count: bool = False) -> None:
        with self._cond:
            if self._closing:
                raise RuntimeError("the batcher is shut down")
            if count:
                self._images_queued += work.images
            self._queue.append(work)
            metrics.enqueued(work.images)
            self._cond.notify()

    def _prepare_in_lane(self, work: Work) -> None:
        """In the lane thread: decode, then queue the pixels (or the error, so it is counted as any failure)."""
        with self._counters_lock:
            self.lane_requests += 1
        if self._drop_if_gone(work, time.monotonic()):  # never decode for nobody
            with self._cond:
                self._images_queued -= work.images
            hand_back([work])
            return
        try:
            ready = partial(given, work.prepare())
        except Exception as exc:  # its own 4xx (or 500), raised again by the inference thread
            ready = partial(reraise, exc)
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

    def _next_batch(self) -> list[Work] | None:
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
            batch: list[Work] = []
            gone: list[Work] = []
            rest: deque[Work] = deque()
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
            hand_back(gone)
            return batch  # empty when every request of head's model was gone

    def _drop_if_gone(self, work: Work, now: float) -> bool:
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

    def _measure(self, batch: list[Work], seconds: float) -> None:
        """The moving average of one image's cost (prepare + forward, as the GIL is shared now), for `admit`."""
        images = sum(work.images for work in batch)
        with self._cond:
            # The first passes after start-up are not the cost (the JIT profiles, caches fill: one was
            # 50 ms here); counted, they made a burst right after start-up look like seconds of queue.
            self._passes_seen += 1
            if self._passes_seen <= COLD_PASSES:
                return
            previous = self._seconds_per_image
            now = seconds / images
            self._seconds_per_image = now if previous == 0 else 0.8 * previous + 0.2 * now

    def _run(self) -> None:
        set_torch_threads(self._torch_threads)
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
            hand_back(batch)

    def _execute(self, batch: list[Work]) -> None:
        model = batch[0].model
        metrics.taken(model.name, [work.enqueued for work in batch])
        ready: list[tuple[Work, np.ndarray]] = []
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
