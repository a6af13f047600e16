"""Real processes for end-to-end tests: uvicorn replicas, training workers, the admin script."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from app.http_protocol import UVICORN_HTTP
from benchmarks import servers
from benchmarks.servers import ROOT as ROOT  # re-exported: the tests import these from here
from benchmarks.servers import free_port as free_port


def spawn(args: list[str], env: dict[str, str], log: Path | None = None) -> subprocess.Popen[bytes]:
    output = log.open("wb") if log else subprocess.PIPE
    return subprocess.Popen(
        [sys.executable, *args], cwd=ROOT, env={**os.environ, **env}, stdout=output, stderr=subprocess.STDOUT
    )


def start_replica(env: dict[str, str], port: int, log: Path | None = None) -> subprocess.Popen[bytes]:
    # The protocol every way of running the service uses: httptools with a bound on request headers.
    command = [
        "-m",
        "uvicorn",
        "--factory",
        "app.main:create_app",
        "--http",
        UVICORN_HTTP,
        "--no-access-log",
        "--port",
        str(port),
    ]
    return spawn(command, env, log)


def wait_ready(url: str, process: subprocess.Popen[bytes], timeout: float = 60) -> None:
    """Wait until the replica at `url` says it is ready (the benchmarks' poller, on /health/ready)."""
    servers.wait_ready(f"{url}/health/ready", process, timeout)


def stop(process: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
    if process.poll() is None:
        process.send_signal(sig)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextmanager
def replicas(env: dict[str, str], count: int, logs: Path) -> Iterator[list[str]]:
    started = [(free_port(), i) for i in range(count)]
    processes = [start_replica(env, port, logs / f"replica-{i}.log") for port, i in started]
    urls = [f"http://127.0.0.1:{port}" for port, _ in started]
    try:
        for url, process in zip(urls, processes, strict=True):
            wait_ready(url, process)
        yield urls
    finally:
        for process in processes:
            stop(process)


def wait_for(predicate: object, timeout: float, interval: float = 0.2) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if callable(predicate) and predicate():
            return
        time.sleep(interval)
    raise TimeoutError(f"condition not met within {timeout} s")
