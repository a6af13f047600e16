"""`python -m app` / `pixelserve`: serve with uvicorn, settings from PIXELSERVE_* variables."""

from __future__ import annotations

import argparse
import atexit
import os
import shutil
import tempfile
from pathlib import Path

import uvicorn

from app.core import metrics_export
from app.core.job_store import JobStore
from app.core.settings import Settings
from app.http_protocol import UVICORN_HTTP
from app.listeners import SpreadWorkers, can_spread

APP = "app.main:create_app"


def _prepare_metrics(settings: Settings, host: str) -> None:
    """Before uvicorn starts (and forks) anything: the multiprocess folder, and the metrics port.

    With several workers each writes its metrics to files in PROMETHEUS_MULTIPROC_DIR (inherited by
    the workers, which read it when they first import prometheus_client): a given folder is emptied
    of an earlier run's files, else a private one is made and removed at exit. One worker keeps the
    plain in-process registry. PIXELSERVE_METRICS_PORT is served from this (the supervisor) process,
    merging every worker's files, so it answers even while workers restart.
    """
    given = os.environ.get(metrics_export.MULTIPROC_ENV)
    if given:
        metrics_export.clean_multiprocess_dir(Path(given))
    elif settings.workers > 1:
        made = tempfile.mkdtemp(prefix="pixelserve-metrics-")
        os.environ[metrics_export.MULTIPROC_ENV] = made
        atexit.register(shutil.rmtree, made, True)
    if settings.metrics_port is not None:
        store = JobStore(settings.job_store) if settings.admin_token else None
        metrics_export.serve_port(settings.metrics_port, host, metrics_export.scrape_registry(store))


def main() -> None:
    parser = argparse.ArgumentParser(prog="pixelserve", description="Serve the model repository over HTTP.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args()
    settings = Settings()
    _prepare_metrics(settings, args.host)
    options = {
        "factory": True,
        "host": args.host,
        "port": args.port,
        # httptools with a bound on request headers (431 past PIXELSERVE_MAX_HEADER_BYTES).
        "http": UVICORN_HTTP,
        # Processes, each with its own event loop, batcher and copy of the models: on a CPU box,
        # one per core gets past the GIL (see README, "Threads and processes").
        "workers": settings.workers,
        "timeout_graceful_shutdown": int(settings.shutdown_grace_s),
        "log_level": settings.log_level,
        "access_log": not settings.access_log,  # ours (app/edge.py) replaces uvicorn's: one line per request
    }
    if settings.workers > 1 and can_spread():  # a listener per worker: connections spread evenly (app/listeners.py)
        SpreadWorkers(uvicorn.Config(APP, **options), args.host, args.port).run()
    else:
        uvicorn.run(APP, **options)


if __name__ == "__main__":
    main()
