"""Overload control, proved with a gated model rather than with timing.

The served model's forward pass blocks on an Event (the tiny real TorchScript model, wrapped), so
the inference thread is held and the queue fills exactly as the test says: the next request is
shed (503, Retry-After), a request waiting past its deadline is answered 504 and never run, and a
request whose client went away never reaches the model. The HTTP tests run a real uvicorn server
(httptools, real sockets) in a thread of the test process, so the test can gate its model.
"""

from __future__ import annotations

import asyncio
import dataclasses
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import torch
import uvicorn
from fastapi import FastAPI
from fastapi.testclient import TestClient

from app.core.artifacts import LoadedModel, load_model
from app.core.batching import Batcher
from app.core.errors import DeadlineExceeded, InvalidInferenceRequest, Overloaded
from app.core.repository import ModelRepository
from app.core.settings import BatchPolicy, OverloadPolicy, Settings
from app.main import create_app
from app.oip.codec import parse_request
from tests.helpers import encode
from tests.images import draw_digit
from tests.processes import free_port, wait_for

IMAGE = encode(draw_digit(7))
PIXELS = np.zeros((1, 28, 28), np.float32)


class Gate:
    """A forward pass that counts what reaches it and waits until the test opens the gate."""

    def __init__(self, forward: Any) -> None:
        self.forward = forward
        self.open = threading.Event()
        self.entered = threading.Event()
        self.calls = 0
        self.images = 0

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        self.images += batch.shape[0]
        self.entered.set()
        assert self.open.wait(30), "the test never opened the gate"
        return self.forward(batch)  # type: ignore[no-any-return]


def gated(model: LoadedModel) -> tuple[LoadedModel, Gate]:
    gate = Gate(model.forward)
    return dataclasses.replace(model, forward=gate), gate


# -- the batcher itself ----------------------------------------------------------------------------


def test_queue_delay_past_its_target_sheds_and_a_late_request_is_never_run(tiny_repository: Path) -> None:
    model, gate = gated(load_model(ModelRepository(tiny_repository).artifact_path("mnist", "1"), torch.device("cpu")))
    batcher = Batcher(lambda _: BatchPolicy(max_batch_size=16, max_delay_ms=0))
    policy = OverloadPolicy(max_queued_images=100, max_queue_delay_s=0.05)

    async def scenario() -> tuple[BaseException | None, list[Any]]:
        blocker = batcher.submit(model, lambda: PIXELS)
        await asyncio.to_thread(gate.entered.wait, 10)  # the thread holds the blocker in forward
        batcher.admit(1, policy)  # nothing queued: admitted
        late = batcher.submit(model, lambda: PIXELS, deadline=time.monotonic() + 0.05, started=time.monotonic())
        on_time = batcher.submit(model, lambda: PIXELS)
        await asyncio.sleep(0.1)  # the oldest queued request has now waited > 50 ms: at least
        shed: BaseException | None = None
        try:
            batcher.admit(1, policy)
        except Overloaded as exc:
            shed = exc
        gate.open.set()
        return shed, await asyncio.gather(blocker, late, on_time, return_exceptions=True)

    try:
        shed, (blocker, late, on_time) = asyncio.run(scenario())
    finally:
        gate.open.set()
        batcher.close()
    assert isinstance(shed, Overloaded) and shed.retry_after_s >= 1 and "ms long" in shed.message
    assert isinstance(late, DeadlineExceeded) and late.status_code == 504
    assert len(blocker) == 1 and len(on_time) == 1
    assert (gate.calls, gate.images) == (2, 2)  # the blocker, then on_time alone: the late one never ran
    assert batcher.shed == {"queue_delay": 1, "deadline": 1}
    assert batcher.queued_images == 0


# -- over HTTP -------------------------------------------------------------------------------------


@contextmanager
def serving(repository: Path, **settings: Any) -> Iterator[tuple[str, FastAPI, Gate]]:
    """A real uvicorn server in a thread; its `mnist` model gated."""
    app = create_app(Settings(model_repository=repository, reload_interval_s=0, **settings))
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=free_port(), http="httptools", log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        wait_for(lambda: server.started, timeout=60, interval=0.05)
        registry = app.state.registry
        registry.models["mnist"], gate = gated(registry.models["mnist"])
        try:
            yield f"http://127.0.0.1:{server.config.port}", app, gate
        finally:
            gate.open.set()
    finally:
        server.should_exit = True
        thread.join(30)


def predict(url: str, client: httpx.Client | None = None) -> httpx.Response:
    files = {"file": ("7.png", IMAGE, "image/png")}
    if client is not None:
        return client.post(f"{url}/predict/mnist", files=files)
    return httpx.post(f"{url}/predict/mnist", files=files, timeout=60)


def test_a_full_queue_answers_503_with_retry_after_at_once_and_keeps_the_connection(tiny_repository: Path) -> None:
    with serving(tiny_repository, max_queued_images=3, max_queue_delay_ms=60_000) as (url, app, gate):
        batcher: Batcher = app.state.batcher
        with ThreadPoolExecutor(4) as pool:
            first = pool.submit(predict, url)
            assert gate.entered.wait(30)
            queued = [pool.submit(predict, url) for _ in range(3)]
            wait_for(lambda: batcher.queued_images == 3, timeout=30, interval=0.02)
            with httpx.Client(timeout=30) as client:
                shed = predict(url, client)
                assert shed.status_code == 503
                assert shed.json() == {"error": shed.json()["error"], "code": "overloaded"}
                assert "3 images are queued" in shed.json()["error"]
                assert shed.headers["Retry-After"] == "1"
                assert shed.headers.get("connection", "keep-alive").lower() != "close"
                v2 = client.post(
                    f"{url}/v2/models/mnist/infer",
                    json={"inputs": [{"name": "images", "datatype": "UINT8", "shape": [1, 28, 28], "data": [0] * 784}]},
                )
                assert v2.status_code == 503 and v2.json()["code"] == "overloaded" and "Retry-After" in v2.headers
                gate.open.set()
                answers = [first.result(), *(future.result() for future in queued)]
                assert [answer.status_code for answer in answers] == [200] * 4
                assert predict(url, client).status_code == 200  # the same connection, room again
    assert gate.images == 5  # the first, the three queued, the last: nothing shed reached the model
    assert batcher.shed["queue_full"] == 2


def test_past_the_oip_timeout_a_queued_request_is_504_and_never_run(tiny_repository: Path) -> None:
    with serving(tiny_repository, max_queue_delay_ms=60_000, request_timeout_s=60) as (url, app, gate):
        with ThreadPoolExecutor(2) as pool:
            first = pool.submit(predict, url)
            assert gate.entered.wait(30)
            body = {
                "parameters": {"timeout": 200_000},  # microseconds, as tritonclient sends it: 0.2 s
                "inputs": [{"name": "images", "datatype": "UINT8", "shape": [1, 28, 28], "data": [0] * 784}],
            }
            late = httpx.post(f"{url}/v2/models/mnist/infer", json=body, timeout=30)  # waits out its deadline
            assert late.status_code == 504
            assert late.json()["code"] == "deadline_exceeded"
            gate.open.set()
            assert first.result().status_code == 200
        wait_for(lambda: app.state.batcher.shed["deadline"] == 1, timeout=10, interval=0.02)
    assert (gate.calls, gate.images) == (1, 1)  # only the first: the late request never reached the model


def test_work_of_a_client_that_disconnected_never_reaches_the_model(tiny_repository: Path) -> None:
    with serving(tiny_repository, max_queue_delay_ms=60_000) as (url, app, gate):
        batcher: Batcher = app.state.batcher
        with ThreadPoolExecutor(1) as pool:
            first = pool.submit(predict, url)
            assert gate.entered.wait(30)
            request = httpx.Request("POST", f"{url}/predict/mnist", files={"file": ("7.png", IMAGE, "image/png")})
            head = "POST /predict/mnist HTTP/1.1\r\nHost: x\r\n" + "".join(
                f"{key}: {value}\r\n" for key, value in request.headers.items() if key.lower() != "host"
            )
            with socket.create_connection(("127.0.0.1", int(url.rsplit(":", 1)[1]))) as sock:
                sock.sendall(head.encode() + b"\r\n" + request.read())
                wait_for(lambda: batcher.queued_images == 1, timeout=30, interval=0.02)
            # Closed: the route sees http.disconnect and cancels the queued work (a private look: no
            # public signal exists until the batcher reaches it, which is what is being tested).
            wait_for(lambda: all(work.future.cancelled() for work in batcher._queue), timeout=10, interval=0.02)
            gate.open.set()
            assert first.result().status_code == 200
        wait_for(lambda: batcher.shed["disconnected"] == 1, timeout=10, interval=0.02)
        assert predict(url).status_code == 200
    assert (gate.calls, gate.images) == (2, 2)  # the first and the last; never the abandoned one


def test_oip_timeout_parameter_is_microseconds_and_checked() -> None:
    tensor = {"name": "images", "datatype": "UINT8", "shape": [1, 28, 28], "data": [0] * 784}

    def parsed(parameters: dict[str, Any]) -> float | None:
        return parse_request(
            httpx.Request("POST", "/", json={"parameters": parameters, "inputs": [tensor]}).read(), None, 8
        ).timeout_s

    assert parsed({"timeout": 250_000}) == 0.25
    assert parsed({}) is None and parsed({"timeout": 0}) is None
    for bad in ("1", -1, 1.5, True):
        with pytest.raises(InvalidInferenceRequest, match="timeout"):
            parsed({"timeout": bad})


def test_overload_and_deadline_answers_are_documented(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    for path in ("/predict/{name}", "/v2/models/{name}/infer", "/v2/models/{name}/versions/{version}/infer"):
        responses = paths[path]["post"]["responses"]
        assert "overloaded" in responses["503"]["description"].lower(), path
        assert "Retry-After" in responses["503"]["headers"], path
        assert "deadline" in responses["504"]["description"].lower(), path
