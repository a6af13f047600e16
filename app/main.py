"""The application factory: `uvicorn --factory app.main:create_app`."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from starlette.concurrency import run_in_threadpool

from app.core import metrics, metrics_export, rollout_decisions
from app.core.batching import Batcher
from app.core.captures import Capturer
from app.core.captures_store import CaptureStore
from app.core.devices import serving_device, set_torch_threads
from app.core.drain import Drainer
from app.core.job_store import JobStore
from app.core.logs import configure_logging
from app.core.onnx_runtime import require_runtime
from app.core.registry import ModelRegistry
from app.core.repository import ModelRepository
from app.core.settings import Settings
from app.core.shadow import ShadowRunner
from app.edge import Edge
from app.http_errors import install_error_handlers
from app.openapi import install_openapi
from app.routes import ADMIN_ROUTERS, api_router
from app.routes.metrics import router as metrics_router
from app.routes.predict import PLAIN_ROUTE

logger = logging.getLogger("pixelserve")


async def _watch(registry: ModelRegistry, store: JobStore | None, interval: float) -> None:
    """Poll the repository: a new current version (a publication, an admin's activation) is hot-loaded.

    Polling a shared folder works the same on one host, a shared volume or NFS, where file
    notifications do not cross hosts."""
    if interval <= 0:
        return
    while True:
        await asyncio.sleep(interval)
        metrics.reload_polled()
        try:
            await run_in_threadpool(registry.refresh)
        except Exception:  # a flaky shared volume must not stop the watcher
            metrics.reload_failed()
            logger.exception("model refresh failed; serving what is loaded")
        try:  # rollouts: this replica's counts to the fleet's, automatic rules (app/core/rollout_decisions.py)
            await run_in_threadpool(rollout_decisions.upkeep, registry, store)
        except Exception:  # the job store may be away for a while: counts wait in `pending`
            logger.exception("rollout upkeep failed; will retry at the next poll")


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    configure_logging(settings.log_level, settings.log_format)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        require_runtime(settings.runtime)  # torchscript without torch: refuse to start, with why
        set_torch_threads(settings.torch_threads)
        # A thread or two of its own, not Starlette's pool of 40: on a few cores, dozens of threads
        # taking turns at the GIL cost more than they overlap (see README, "Threads").
        app.state.batcher = Batcher(
            settings.batch_policy, threads=settings.inference_threads, torch_threads=settings.torch_threads
        )
        registry = ModelRegistry(
            ModelRepository(settings.model_repository, settings.artifact_format),
            serving_device(settings.device),
            settings.models,
            settings.optimize,
            runtime=settings.runtime,
        )
        registry.refresh()
        app.state.registry = registry
        app.state.shadows = ShadowRunner(app.state.batcher, settings.overload, settings.request_timeout_s)
        # Without an admin token the job routes refuse before touching the store: a serving-only
        # replica (a read-only repository, say) opens no database at all, unless it captures.
        app.state.job_store = JobStore(settings.job_store) if settings.admin_token or settings.capture else None
        app.state.capture_store = (
            CaptureStore(app.state.job_store, settings.captures_root) if app.state.job_store is not None else None
        )
        app.state.capturer = (
            Capturer(app.state.capture_store, settings.capture, settings.capture_queue) if settings.capture else None
        )
        app.state.metrics_registry = metrics_export.scrape_registry(app.state.job_store)
        # PIXELSERVE_METRICS_PORT in one process (plain uvicorn): served from here, unless `python -m app`
        # serves it already; with several workers, only the supervisor (app/__main__.py) does.
        own_port = (
            settings.metrics_port is not None
            and metrics_export.multiprocess_dir() is None
            and metrics_export.serve_port(settings.metrics_port, "0.0.0.0", app.state.metrics_registry)
        )
        logger.info("serving %s", {n: m.version for n, m in registry.models.items()})
        # Start-up leaves ~250k long-lived objects (torch, FastAPI, the models); a full GC pass over
        # them took 130 ms and landed on whichever requests were in flight: the p99. Frozen, they
        # are never scanned again and a full pass takes about a millisecond.
        gc.collect()
        gc.freeze()
        watcher = asyncio.create_task(_watch(registry, app.state.job_store, settings.reload_interval_s))
        app.state.drainer.install()
        try:
            yield
        finally:
            app.state.drainer.uninstall()
            if own_port and settings.metrics_port is not None:
                metrics_export.stop_port(settings.metrics_port)
            app.state.batcher.close()
            if app.state.capturer is not None:  # after the batcher: no more offers; writes what is queued
                await run_in_threadpool(app.state.capturer.close)
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
            if app.state.job_store is not None:
                app.state.job_store.engine.dispose()
            metrics_export.worker_stopped()  # its live gauges leave the merged view (multiprocess mode)

    app = FastAPI(
        title="pixelserve",
        summary="Image classifiers (MNIST digits, Fashion-MNIST garments) behind an HTTP API",
        version="0.1.0",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.drainer = Drainer(settings.drain_s)
    install_error_handlers(app)
    install_openapi(app)
    app.include_router(api_router)
    # POST /predict/{name} first, as a plain route: FastAPI's per-request routing and parameter solving skipped
    # (app/routes/predict.py); the FastAPI route behind it is what the OpenAPI document shows.
    app.router.routes.insert(0, PLAIN_ROUTE)
    if settings.metrics_port is None:  # else on its own port, away from the load balancer
        app.include_router(metrics_router)
    admin_routes = [route for router in ADMIN_ROUTERS for route in router.routes]
    # One pure ASGI layer, outermost: request id, shedding, admin gate, body limit, 500s, access log, metrics.
    app.add_middleware(Edge, settings=settings, admin_routes=admin_routes)
    return app
