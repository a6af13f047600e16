"""`python -m app` / `pixelserve`: serve with uvicorn, settings from PIXELSERVE_* variables."""

from __future__ import annotations

import argparse

import uvicorn

from app.core.settings import Settings
from app.http_protocol import UVICORN_HTTP


def main() -> None:
    parser = argparse.ArgumentParser(prog="pixelserve", description="Serve the model repository over HTTP.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args()
    settings = Settings()
    uvicorn.run(
        "app.main:create_app",
        factory=True,
        host=args.host,
        port=args.port,
        # httptools with a bound on request headers (431 past PIXELSERVE_MAX_HEADER_BYTES).
        http=UVICORN_HTTP,
        # Processes, each with its own event loop, batcher and copy of the models: on a CPU box,
        # one per core gets past the GIL (see README, "Threads and processes").
        workers=settings.workers,
        timeout_graceful_shutdown=int(settings.shutdown_grace_s),
        log_level=settings.log_level,
        access_log=not settings.access_log,  # ours (app/catch_all.py) replaces uvicorn's: one line per request
    )


if __name__ == "__main__":
    main()
