"""The real server: `uvicorn --factory app.main:create_app` in its own process, on loopback."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.helpers import encode
from tests.images import draw_digit
from tests.processes import free_port, replicas, spawn, start_replica, stop, wait_for, wait_ready


@pytest.fixture()
def server(tiny_repository: Path, tmp_path: Path) -> Iterator[str]:
    # 40 requests at once test serving, not shedding: on a busy machine they can pass overload
    # control's default 100 ms queue-delay target (tests/test_overload.py tests that).
    env = {"PIXELSERVE_MODEL_REPOSITORY": str(tiny_repository), "PIXELSERVE_MAX_QUEUE_DELAY_MS": "60000"}
    with replicas(env, 1, tmp_path) as urls:
        yield urls[0]


def test_real_server_serves_and_handles_concurrency(server: str) -> None:
    image = encode(draw_digit(2))
    with httpx.Client(base_url=server) as client:
        single = client.post("/predict/mnist", files={"file": ("two.png", image, "image/png")})
        assert single.status_code == 200 and single.json()["version"] == "1"
        assert client.post("/predict/mnist", content=b"nope", headers={"Content-Type": "image/png"}).status_code == 415

    async def burst() -> list[int]:
        async with httpx.AsyncClient(base_url=server) as client:
            responses = await asyncio.gather(
                *(
                    client.post("/predict/mnist", content=image, headers={"Content-Type": "image/png"})
                    for _ in range(40)
                )
            )
        return [r.status_code for r in responses]

    assert asyncio.run(burst()) == [200] * 40


def test_bad_setting_stops_start_up_with_a_clear_message(tmp_path: Path) -> None:
    process = start_replica({"PIXELSERVE_MODEL_REPOSITORY": str(tmp_path / "absent")}, free_port())
    output, _ = process.communicate(timeout=60)
    assert process.returncode != 0
    assert b"model_repository" in output and b"is not a directory" in output


def spawned_workers(supervisor: int) -> set[int]:
    """The supervisor's children that are uvicorn workers, not multiprocessing's resource tracker.

    uvicorn starts each worker with multiprocessing's "spawn" context: a fresh interpreter running
    `spawn_main`; the tracker, also a child, runs `multiprocessing.resource_tracker`.
    """
    children = [
        int(pid)
        for task in Path(f"/proc/{supervisor}/task").iterdir()
        for pid in (task / "children").read_text().split()
    ]
    return {pid for pid in children if b"multiprocessing.spawn" in Path(f"/proc/{pid}/cmdline").read_bytes()}


@pytest.fixture()
def two_workers(tiny_repository: Path, tmp_path: Path) -> Iterator[tuple[str, subprocess.Popen[bytes], Path]]:
    """`python -m app` with PIXELSERVE_WORKERS=2, both workers through their start-up: (url, supervisor, log)."""
    port = free_port()
    env = {"PIXELSERVE_MODEL_REPOSITORY": str(tiny_repository), "PIXELSERVE_WORKERS": "2"}
    log = tmp_path / "server.log"
    process = spawn(["-m", "app", "--port", str(port)], env, log)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, process)  # one worker is up: wait for the other's application start-up too
        wait_for(lambda: log.read_text().count("Application startup complete.") == 2, 60)
        yield url, process, log
    finally:
        stop(process)


def test_python_m_app_with_two_worker_processes(two_workers: tuple[str, subprocess.Popen[bytes], Path]) -> None:
    url, process, log = two_workers
    workers = spawned_workers(process.pid)
    assert len(workers) == 2, workers
    started = {int(pid) for pid in re.findall(r"Started server process \[(\d+)\]", log.read_text())}
    assert started == workers  # each worker ran the app's start-up and serves on its listener
    assert "SO_REUSEPORT listeners" in log.read_text()
    image = encode(draw_digit(5))
    with httpx.Client(base_url=url) as client:
        answers = [
            client.post("/predict/mnist", content=image, headers={"Content-Type": "image/png"}) for _ in range(8)
        ]
    assert all(a.status_code == 200 for a in answers) and len({a.json()["label"] for a in answers}) == 1
    stop(process)
    assert process.returncode == 0


def test_a_killed_worker_is_replaced_and_its_listener_goes_with_it(
    two_workers: tuple[str, subprocess.Popen[bytes], Path],
) -> None:
    """Each worker listens on its own SO_REUSEPORT socket (app/listeners.py). A worker killed with SIGKILL
    is restarted by the supervisor on a fresh listener; were the dead one's socket still open in the
    group, the kernel would keep handing it about half the new connections, and they would hang."""
    url, process, log = two_workers
    victim = min(spawned_workers(process.pid))
    os.kill(victim, signal.SIGKILL)
    wait_for(lambda: len(spawned_workers(process.pid) - {victim}) == 2, 60)
    wait_for(lambda: log.read_text().count("Application startup complete.") == 3, 60)
    image = encode(draw_digit(4))
    for _ in range(40):  # a new connection each: the kernel picks a listener per connection
        answer = httpx.post(f"{url}/predict/mnist", content=image, headers={"Content-Type": "image/png"}, timeout=5)
        assert answer.status_code == 200
