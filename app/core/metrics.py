"""Every Prometheus metric of the service, defined once, and the small functions that record them.

The batcher, the registry, the watcher and the HTTP middleware call the functions below (one line
each at their call sites); how a scrape collects them, across worker processes too, is in
app/core/metrics_export.py. prometheus-client is not a web framework: this module is core.

Label values are bounded: model names and versions come from the registry (what was loaded from
the repository), never from a URL; routes are templates; reasons and statuses are fixed sets.

Under `python -m app` with several workers (PROMETHEUS_MULTIPROC_DIR set before the workers
start) every value lives in a per-process file; gauges say how processes combine: `livesum` for
queue depth and images in flight (the replica's total, dead workers left out), `liveall` for the
served version (one series per live worker, labelled `pid`: a worker whose hot reload failed shows).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any

from prometheus_client import Counter, Gauge, Histogram, disable_created_metrics

# `_created` series double every counter and histogram and do not exist in multiprocess mode:
# off, so one process and many expose the same names.
disable_created_metrics()  # type: ignore[no-untyped-call]

# From a cached /health probe (~0.2 ms) to a large upload queued behind others (seconds).
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# A forward pass of one 28x28 image takes ~0.1 ms on a core; a full batch a few ms.
FORWARD_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096)  # PIXELSERVE_MAX_BATCH_SIZE is at most 4096

REQUESTS = Counter(
    "pixelserve_requests",
    "HTTP requests answered, by route template, method, model, served version and status class",
    ["route", "method", "model", "version", "status"],
)
REQUEST_SECONDS = Histogram(
    "pixelserve_request_duration_seconds",
    "Time from a request's arrival to its last response byte, by route template and model",
    ["route", "model"],
    buckets=LATENCY_BUCKETS,
)
BATCH_IMAGES = Histogram("pixelserve_batch_images", "Images per forward pass", ["model"], buckets=BATCH_BUCKETS)
FORWARD_SECONDS = Histogram(
    "pixelserve_forward_seconds", "Time of one batched forward pass", ["model"], buckets=FORWARD_BUCKETS
)
QUEUE_WAIT_SECONDS = Histogram(
    "pixelserve_queue_wait_seconds",
    "Time a request waited in the batching queue before its batch was taken",
    ["model"],
    buckets=LATENCY_BUCKETS,
)
# The HPA of deploy/kubernetes/overlays/production-queue-hpa scales on this name: keep it.
QUEUE_IMAGES = Gauge(
    "pixelserve_queue_images", "Images waiting in the batching queue (all models)", multiprocess_mode="livesum"
)
IN_FLIGHT_IMAGES = Gauge(
    "pixelserve_images_in_flight",
    "Images submitted to the batcher and not yet answered (large-image lane, queue and forward pass)",
    multiprocess_mode="livesum",
)
SHED = Counter(
    "pixelserve_requests_shed",
    "Requests refused or dropped unrun by overload control, by reason",
    ["reason"],
)
MODEL_LOADS = Counter("pixelserve_model_loads", "Model versions loaded (start-up and hot reload)", ["model", "version"])
MODEL_REFUSALS = Counter(
    "pixelserve_model_refusals", "Model versions refused (load, checksum or smoke-test failure)", ["model", "version"]
)
SERVED_VERSION = Gauge(
    "pixelserve_model_served_version",
    "Version number each worker serves per model (0: none)",
    ["model"],
    multiprocess_mode="liveall",
)
RELOAD_POLLS = Counter("pixelserve_reload_polls", "Polls of the model repository for new current versions")
RELOAD_FAILURES = Counter(
    "pixelserve_reload_failures", "Failed repository polls (model: the model whose refresh failed, or empty)", ["model"]
)

# Rollouts (app/core/rollout.py): every answer by the version and role that computed it.
CONFIDENCE_BUCKETS = (0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0)
VERSION_ANSWERS = Counter(
    "pixelserve_version_answers",
    "Images answered, by model, version and role (served, candidate: a canary, shadow: run after the answer)",
    ["model", "version", "role"],
)
VERSION_CONFIDENCE = Histogram(
    "pixelserve_version_confidence",
    "Confidence (top probability) of each answer, by model, version and role; _sum/_count is the mean",
    ["model", "version", "role"],
    buckets=CONFIDENCE_BUCKETS,
)
VERSION_SECONDS = Histogram(
    "pixelserve_version_answer_seconds",
    "From a request's arrival (a shadow's submission) to its answer, by model, version and role",
    ["model", "version", "role"],
    buckets=LATENCY_BUCKETS,
)
SHADOW_COMPARISONS = Counter(
    "pixelserve_shadow_comparisons",
    "Images a shadow ran on, by the version that answered, the shadow and outcome (agree, disagree, error, shed)",
    ["model", "answered", "shadow", "outcome"],
)

_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_request_children: dict[tuple[str, str, str, str, str], tuple[Counter, Histogram]] = {}
_model_children: dict[str, tuple[Histogram, Histogram, Histogram]] = {}
_version_children: dict[tuple[str, str, str], tuple[Counter, Histogram, Histogram]] = {}


def status_class(status: int) -> str:
    """2xx, 4xx, 5xx...; "none" when no response was sent (the client left first)."""
    return f"{status // 100}xx" if 100 <= status < 600 else "none"


def request_done(route: str, method: str, model: str, version: str, status: int, seconds: float) -> None:
    """One answered HTTP request (the middleware's call). Label children are cached: ~1 us per request."""
    key = (route, method if method in _METHODS else "other", model, version, status_class(status))
    children = _request_children.get(key)
    if children is None:
        children = (REQUESTS.labels(*key), REQUEST_SECONDS.labels(route, model))
        _request_children[key] = children  # bounded: every part of the key is
    children[0].inc()
    children[1].observe(seconds)


# -- the batcher -----------------------------------------------------------------------------


def enqueued(images: int) -> None:
    QUEUE_IMAGES.inc(images)


def queue_left(images: int) -> None:
    """After a batch is taken: what is still queued (set, not decremented: exact whatever else left the queue)."""
    QUEUE_IMAGES.set(images)


def track_in_flight(future: asyncio.Future[Any], images: int) -> None:
    """In flight from submission until the request's future is done, whichever way (answer, error, cancel)."""
    IN_FLIGHT_IMAGES.inc(images)
    future.add_done_callback(lambda _: IN_FLIGHT_IMAGES.dec(images))


def taken(model: str, enqueued_at: Sequence[float]) -> None:
    """A batch taken by an inference thread: how long each of its requests waited (time.monotonic() stamps)."""
    now = time.monotonic()
    child = _of_model(model)[2]
    for stamp in enqueued_at:
        if stamp > 0:  # 0: never queued with a stamp
            child.observe(now - stamp)


def forward_pass(model: str, images: int, seconds: float) -> None:
    batch_images, forward_seconds, _ = _of_model(model)
    batch_images.observe(images)
    forward_seconds.observe(seconds)


def _of_model(model: str) -> tuple[Histogram, Histogram, Histogram]:
    """The batcher's label children of one model, cached: .labels() costs as much as an observation."""
    children = _model_children.get(model)
    if children is None:  # names of loaded models only: bounded
        children = (BATCH_IMAGES.labels(model), FORWARD_SECONDS.labels(model), QUEUE_WAIT_SECONDS.labels(model))
        _model_children[model] = children
    return children


def request_shed(reason: str) -> None:
    """Overload control refused or dropped a request; `reason` is one of the batcher's fixed names."""
    SHED.labels(reason).inc()


# -- the registry and its watcher ------------------------------------------------------------


def model_loaded(model: str, version: str) -> None:
    MODEL_LOADS.labels(model, version).inc()
    SERVED_VERSION.labels(model).set(int(version) if version.isdigit() else 0)
    _of_model(model)  # series at 0 from the start: rate() over them is defined before the first request


def model_refused(model: str, version: str) -> None:
    MODEL_REFUSALS.labels(model, version).inc()


def model_unloaded(model: str) -> None:
    SERVED_VERSION.labels(model).set(0)


def reload_polled() -> None:
    RELOAD_POLLS.inc()


def reload_failed(model: str = "") -> None:
    RELOAD_FAILURES.labels(model).inc()


# -- rollouts ---------------------------------------------------------------------------------


def version_answered(model: str, version: str, role: str, confidences: list[float], seconds: float) -> None:
    """Answers computed by one version (label children cached: loaded versions and three roles are bounded)."""
    key = (model, version, role)
    children = _version_children.get(key)
    if children is None:
        children = (VERSION_ANSWERS.labels(*key), VERSION_CONFIDENCE.labels(*key), VERSION_SECONDS.labels(*key))
        _version_children[key] = children
    children[0].inc(len(confidences))
    for confidence in confidences:
        children[1].observe(confidence)
    children[2].observe(seconds)


def shadow_compared(model: str, answered: str, shadow: str, outcome: str, images: int = 1) -> None:
    SHADOW_COMPARISONS.labels(model, answered, shadow, outcome).inc(images)


# -- captures (app/core/captures.py) ---------------------------------------------------------

CAPTURES = Counter(
    "pixelserve_captures",
    "Captured images by model and outcome: stored, dropped (hand-off full), failed (write error), evicted (retention)",
    ["model", "outcome"],
)


def captured(model: str, outcome: str, images: int = 1) -> None:
    """`model` is a key of PIXELSERVE_CAPTURE (bounded); `outcome` one of the four above."""
    CAPTURES.labels(model, outcome).inc(images)
