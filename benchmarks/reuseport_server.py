"""pixelserve's worker processes each on a listener of its own (SO_REUSEPORT): the kernel spreads connections.

    python -m benchmarks.reuseport_server --port 8000 [--workers 2]

The alternative `benchmarks.edge` measures against `python -m app`, where uvicorn's workers share one
listening socket and whichever wakes first accepts. Settings come from PIXELSERVE_* as in `python -m app`;
this launcher restarts nothing: a benchmark, not a supervisor.
"""

from __future__ import annotations

import argparse
import multiprocessing
import signal
import socket
import sys
from types import FrameType

import uvicorn

from app.core.settings import Settings
from app.http_protocol import UVICORN_HTTP


def _listener(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    return sock


def _worker(host: str, port: int) -> None:
    settings = Settings()
    config = uvicorn.Config(
        "app.main:create_app",
        factory=True,
        http=UVICORN_HTTP,
        log_level=settings.log_level,
        access_log=False,
        timeout_graceful_shutdown=int(settings.shutdown_grace_s),
    )
    uvicorn.Server(config).run(sockets=[_listener(host, port)])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.reuseport_server")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args(argv)
    spawn = multiprocessing.get_context("spawn")
    workers = [spawn.Process(target=_worker, args=(args.host, args.port)) for _ in range(args.workers)]
    for worker in workers:
        worker.start()

    def stop(signum: int, _: FrameType | None) -> None:
        for worker in workers:
            worker.terminate()  # SIGTERM: uvicorn's graceful shutdown

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    for worker in workers:
        worker.join()
    return 0


if __name__ == "__main__":
    sys.exit(main())
