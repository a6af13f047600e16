"""The real server: `uvicorn --factory app.main:create_app` in its own process, on loopback."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import ROOT, encode
from tests.images import draw_digit


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_server(env: dict[str, str], port: int) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "uvicorn", "--factory", "app.main:create_app", "--port", str(port)]
    return subprocess.Popen(
        command, cwd=ROOT, env={**os.environ, **env}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )


@pytest.fixture()
def server(tiny_repository: Path) -> Iterator[str]:
    port = free_port()
    process = start_server({"PIXELSERVE_MODEL_REPOSITORY": str(tiny_repository)}, port)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{url}/health/ready").status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        else:
            pytest.fail("server did not become ready")
        yield url
    finally:
        process.terminate()
        process.wait(timeout=20)


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
    process = start_server({"PIXELSERVE_MODEL_REPOSITORY": str(tmp_path / "absent")}, free_port())
    output, _ = process.communicate(timeout=60)
    assert process.returncode != 0
    assert b"model_repository" in output and b"is not a directory" in output
