"""Adaptive batching: batched answers equal unbatched ones, a bad request fails alone, versions never mix.

The Batcher tests hold the inference thread on a gate so the batch's contents are known exactly;
the HTTP test loads a real uvicorn process with a concurrent burst.
"""

from __future__ import annotations

import asyncio
import dataclasses
import shutil
import threading
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from app.core.artifacts import LoadedModel, load_model
from app.core.batch_work import Probabilities
from app.core.batching import Batcher
from app.core.errors import InvalidImage
from app.core.inference import run_model
from app.core.repository import ModelRepository
from app.core.settings import BatchPolicy, Settings
from app.main import create_app
from tests.helpers import encode
from tests.processes import free_port, start_replica, stop, wait_ready
from training.data import LoadedDataset

POLICY = BatchPolicy(max_batch_size=64, max_delay_ms=0)


def load(repository: Path, name: str, version: str = "1") -> LoadedModel:
    return load_model(ModelRepository(repository).artifact_path(name, version), torch.device("cpu"))


def dataset_pixels(data: LoadedDataset, count: int, offset: int = 0) -> np.ndarray:
    return data.test.images[offset : offset + count].numpy().astype(np.float32) / 255  # [count, 28, 28]


def fixed(pixels: np.ndarray) -> Callable[[], np.ndarray]:
    return lambda: pixels


async def gated_burst(
    batcher: Batcher, requests: list[tuple[LoadedModel, Callable[[], np.ndarray]]]
) -> list[Probabilities | BaseException]:
    """Hold the inference thread on a first request while `requests` queue up, then release it."""
    gate = threading.Event()
    blocker = next(model for model, _ in requests)
    first = batcher.submit(blocker, lambda: (gate.wait(10), np.zeros((1, 28, 28), np.float32))[1])
    await asyncio.sleep(0.1)  # the thread has taken `first` and waits in its prepare
    futures = [batcher.submit(model, prepare, 1) for model, prepare in requests]
    gate.set()
    await first
    return list(await asyncio.gather(*futures, return_exceptions=True))


def test_batched_answers_equal_unbatched_with_mixed_models_and_a_bad_request(
    tiny_repository: Path, mnist: LoadedDataset, fashion: LoadedDataset
) -> None:
    digits, garments = load(tiny_repository, "mnist"), load(tiny_repository, "fashion")
    digit_pixels, garment_pixels = dataset_pixels(mnist, 12), dataset_pixels(fashion, 12)

    def broken() -> np.ndarray:
        raise InvalidImage("no image here")

    requests: list[tuple[LoadedModel, Callable[[], np.ndarray]]] = []
    for i in range(12):
        requests.append((digits, fixed(digit_pixels[i : i + 1])))
        requests.append((garments, fixed(garment_pixels[i : i + 1])))
    requests.insert(7, (digits, broken))
    batcher = Batcher(lambda _: POLICY)
    try:
        results = asyncio.run(gated_burst(batcher, requests))
    finally:
        batcher.close()

    assert isinstance(results[7], InvalidImage)
    answers = results[:7] + results[8:]
    unbatched = [run_model(m, prepare()) for m, prepare in requests[:7] + requests[8:]]
    for answer, alone in zip(answers, unbatched, strict=True):
        assert not isinstance(answer, BaseException)
        np.testing.assert_allclose(answer, alone, atol=1e-5)
        assert int(np.argmax(answer[0])) == int(np.argmax(alone[0]))
    # One pass per model for the whole burst (plus the gate's own pass), the bad request counted.
    assert batcher.counters["mnist"].sizes[12] == 1 and batcher.counters["fashion"].sizes[12] == 1
    assert batcher.counters["mnist"].failed_requests == 1


def test_two_versions_queued_together_never_share_a_forward_pass(
    tiny_repository: Path, tmp_path: Path, mnist: LoadedDataset
) -> None:
    repository = tmp_path / "models"
    shutil.copytree(tiny_repository / "mnist", repository / "mnist")
    # Version 2: the same network with its last layer's bias shifted, so its answers differ visibly.
    old, loaded = load(repository, "mnist"), load(repository, "mnist")
    module = loaded.forward
    assert isinstance(module, torch.nn.Module)
    with torch.no_grad():
        bias = [p for name, p in module.named_parameters() if name.endswith("bias")][-1]
        bias += torch.arange(bias.numel(), dtype=bias.dtype)
    new = dataclasses.replace(loaded, version="2", metadata={**loaded.metadata, "version": "2"})
    pixels = dataset_pixels(mnist, 8)
    requests = [(old if i % 2 else new, fixed(pixels[i : i + 1])) for i in range(8)]
    batcher = Batcher(lambda _: POLICY)
    try:
        results = asyncio.run(gated_burst(batcher, requests))
    finally:
        batcher.close()
    for (model, prepare), answer in zip(requests, results, strict=True):
        assert not isinstance(answer, BaseException)
        np.testing.assert_allclose(answer, run_model(model, prepare()), atol=1e-5)
    assert batcher.counters["mnist"].sizes[4] == 2  # one pass per version, four requests each


def test_a_request_larger_than_a_batch_runs_alone(tiny_repository: Path, mnist: LoadedDataset) -> None:
    digits = load(tiny_repository, "mnist")
    pixels = dataset_pixels(mnist, 40)
    batcher = Batcher(lambda _: BatchPolicy(max_batch_size=16, max_delay_ms=0))

    async def scenario() -> list[Probabilities]:
        return list(
            await asyncio.gather(
                batcher.submit(digits, fixed(pixels), 40), batcher.submit(digits, fixed(pixels[:3]), 3)
            )
        )

    try:
        big, small = asyncio.run(scenario())
    finally:
        batcher.close()
    np.testing.assert_allclose(big, run_model(digits, pixels), atol=1e-5)
    np.testing.assert_allclose(small, run_model(digits, pixels[:3]), atol=1e-5)


def test_multi_image_request_answers_in_order_and_is_capped(tiny_repository: Path, mnist: LoadedDataset) -> None:
    images = [encode(image) for image in mnist.test.images[:5].numpy()]
    settings = Settings(model_repository=tiny_repository, max_images_per_request=4)
    with TestClient(create_app(settings)) as client:
        singles = [
            client.post("/predict/mnist", files={"file": ("d.png", image, "image/png")}).json() for image in images
        ]
        listed = client.post(
            "/predict/mnist", files=[("file", (f"{i}.png", img, "image/png")) for i, img in enumerate(images[:4])]
        )
        assert listed.status_code == 200
        for one, alone in zip(listed.json(), singles[:4], strict=True):
            assert one["label"] == alone["label"] and one["version"] == "1"
            np.testing.assert_allclose(
                list(one["probabilities"].values()), list(alone["probabilities"].values()), atol=1e-5
            )

        too_many = client.post(
            "/predict/mnist", files=[("file", (f"{i}.png", img, "image/png")) for i, img in enumerate(images)]
        )
        assert too_many.status_code == 413 and too_many.json()["code"] == "too_many_images"

        bad = [("file", ("0.png", images[0], "image/png")), ("file", ("x.png", b"not an image", "image/png"))]
        response = client.post("/predict/mnist", files=bad)
        assert response.status_code == 415 and response.json()["error"].startswith("file 2 of 2:")

        batching = client.get("/models/mnist").json()["batching"]
        assert batching["max_batch_size"] == 16 and batching["images"] >= 9 and batching["failed_requests"] == 1


@pytest.mark.parametrize("max_batch_size", [16])
def test_concurrent_burst_over_http_is_batched_and_equal(
    tiny_repository: Path, tmp_path: Path, mnist: LoadedDataset, fashion: LoadedDataset, max_batch_size: int
) -> None:
    """64 requests at once against a real uvicorn process, both models and a bad upload among them."""
    bodies = [("mnist", encode(img)) for img in mnist.test.images[:32].numpy()]
    bodies += [("fashion", encode(img)) for img in fashion.test.images[:31].numpy()]
    bodies.insert(20, ("mnist", b"\x89PNG\r\n\x1a\n truncated"))
    env = {
        "PIXELSERVE_MODEL_REPOSITORY": str(tiny_repository),
        "PIXELSERVE_MAX_BATCH_SIZE": str(max_batch_size),
        "PIXELSERVE_MAX_DELAY_MS": "20",
        # Batching is under test, not shedding: on a busy machine 64 requests at once can pass the
        # default 100 ms queue-delay target of overload control (tests/test_overload.py covers that).
        "PIXELSERVE_MAX_QUEUE_DELAY_MS": "60000",
    }
    port = free_port()
    process = start_replica(env, port, tmp_path / "server.log")
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, process)

        async def burst() -> list[httpx.Response]:
            async with httpx.AsyncClient(base_url=url, timeout=30, limits=httpx.Limits(max_connections=64)) as client:
                calls = [
                    client.post(f"/predict/{m}", content=b, headers={"Content-Type": "image/png"}) for m, b in bodies
                ]
                return list(await asyncio.gather(*calls))

        responses = asyncio.run(burst())
        sizes = httpx.get(f"{url}/models/mnist").json()["batching"]["batch_sizes"]
    finally:
        stop(process)
    assert responses[20].status_code in (415, 422)
    settings = Settings(model_repository=tiny_repository, max_batch_size=1)
    with TestClient(create_app(settings)) as client:
        for (name, body), response in zip(bodies, responses, strict=True):
            if body.startswith(b"\x89PNG\r\n\x1a\n t"):
                continue
            alone = client.post(f"/predict/{name}", content=body, headers={"Content-Type": "image/png"}).json()
            assert response.status_code == 200
            assert response.json()["label"] == alone["label"]
            batched, single = response.json()["probabilities"], alone["probabilities"]
            assert max(abs(batched[k] - single[k]) for k in single) < 1e-5
    assert any(int(size) > 1 for size in sizes), sizes
