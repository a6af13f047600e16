"""What one request may cost to decode: the per-request pixel budget, JPEG draft, the large-image lane, NaN pixels.

Costs are asserted through what the service reports (status, message, the batcher's counters, the
size an image decodes at), never through time.
"""

from __future__ import annotations

import base64
import io
import struct
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from app.core.batching import Batcher
from app.core.imaging import WORKING_SIDE, decoded_size
from app.core.inference import to_model_input
from app.core.settings import Settings
from app.main import create_app
from tests.helpers import encode
from tests.images import draw_digit

SIDE = 4096  # the largest square the default per-image limit accepts


def bomb_gif(side: int) -> bytes:
    """35 bytes whose header declares a side x side canvas; the only frame is one white pixel."""
    screen = struct.pack("<HHBBB", side, side, 0x80, 0, 0) + b"\x00\x00\x00\xff\xff\xff"
    return b"GIF89a" + screen + b"," + struct.pack("<HHHHB", 0, 0, 1, 1, 0) + b"\x02\x02\x4c\x01\x00;"


def float_tiff(value: float) -> bytes:
    pixels = np.asarray(draw_digit(3), dtype=np.float32) / 255
    pixels[5, 7] = value
    return encode(Image.fromarray(pixels, mode="F"), "TIFF")


def bytes_request(*files: bytes) -> dict[str, object]:
    data = [base64.b64encode(f).decode() for f in files]
    return {"inputs": [{"name": "input", "datatype": "BYTES", "shape": [len(files)], "data": data}]}


@pytest.fixture()
def app_client(tiny_repository: Path) -> Iterator[TestClient]:
    with TestClient(create_app(Settings(model_repository=tiny_repository))) as client:
        yield client


def batcher_of(client: TestClient) -> Batcher:
    batcher: Batcher = client.app.state.batcher  # type: ignore[attr-defined]
    return batcher


def test_gif_bomb_request_is_refused_by_the_request_budget_before_decoding(app_client: TestClient) -> None:
    settings = Settings()
    count = settings.max_request_pixels // (SIDE * SIDE) + 1
    assert count <= settings.max_images_per_request  # each image is allowed alone: only the budget refuses
    files = [("file", (f"{i}.gif", bomb_gif(SIDE), "image/gif")) for i in range(count)]
    response = app_client.post("/predict/mnist", files=files)
    assert response.status_code == 413 and response.json()["code"] == "image_too_large"
    message = response.json()["error"]
    assert str(count * SIDE * SIDE) in message and str(settings.max_request_pixels) in message
    counters = batcher_of(app_client).counters["mnist"]
    assert (counters.failed_requests, counters.images) == (1, 0)  # refused before the queue: nothing decoded
    assert batcher_of(app_client).lane_requests == 0

    v2 = app_client.post("/v2/models/mnist/infer", json=bytes_request(*[bomb_gif(SIDE)] * count))
    assert v2.status_code == 413 and str(settings.max_request_pixels) in v2.json()["error"]


def test_an_image_over_the_per_image_limit_is_named(app_client: TestClient) -> None:
    files = [("file", ("ok.png", encode(draw_digit(3)), "image/png")), ("file", ("b.gif", bomb_gif(6324), "image/gif"))]
    response = app_client.post("/predict/mnist", files=files)
    assert response.status_code == 413
    assert response.json()["error"].startswith("file 2 of 2: image has 6324x6324 pixels")


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_float_tiff_is_422(app_client: TestClient, value: float) -> None:
    tiff = float_tiff(value)
    assert Image.open(io.BytesIO(tiff)).mode == "F"
    response = app_client.post("/predict/mnist", content=tiff, headers={"Content-Type": "image/tiff"})
    assert response.status_code == 422 and response.json()["code"] == "invalid_image"
    assert "NaN or infinite" in response.json()["error"]
    v2 = app_client.post("/v2/models/mnist/infer", json=bytes_request(encode(draw_digit(1)), tiff))
    assert v2.status_code == 422 and "element 2 of 2" in v2.json()["error"]
    assert "NaN or infinite" in v2.json()["error"]
    finite = app_client.post("/predict/mnist", content=float_tiff(0.5), headers={"Content-Type": "image/tiff"})
    assert finite.status_code == 200


def test_a_big_jpeg_decodes_through_draft_and_is_counted_as_drafted(app_client: TestClient) -> None:
    photo = encode(draw_digit(4, size=2400).resize((4000, 3000)).convert("RGB"), "JPEG", quality=85)
    assert decoded_size(photo, 40_000_000) == (1000, 750)  # 1/4 scale: the longest side stays >= WORKING_SIDE
    small = encode(draw_digit(4, size=WORKING_SIDE * 2 - 1).convert("RGB"), "JPEG")
    assert decoded_size(small, 40_000_000) == (WORKING_SIDE * 2 - 1,) * 2  # under twice the side: untouched
    # Declared 48 MP, three times the per-image limit; decoded at 1/8 it costs 0.75 MP and is served.
    huge = encode(Image.new("L", (8000, 6000), 255), "JPEG", quality=50)
    assert decoded_size(huge, Settings().max_image_pixels) == (1000, 750)
    response = app_client.post("/predict/mnist", content=photo, headers={"Content-Type": "image/jpeg"})
    assert response.status_code == 200
    full = to_model_input(encode(draw_digit(4, size=2400).resize((4000, 3000)), "PNG"), "digit", 40_000_000)
    drafted = to_model_input(photo, "digit", 40_000_000)
    assert float(np.abs(drafted - full).mean()) < 0.03  # the recipe sees the same digit


def _predict_both_ways(tiny_repository: Path, threshold: int, body: bytes) -> tuple[dict[str, object], int, int]:
    settings = Settings(model_repository=tiny_repository, heavy_request_pixels=threshold)
    with TestClient(create_app(settings)) as client:
        files = [("file", ("big.png", body, "image/png")), ("file", ("small.png", encode(draw_digit(7)), "image/png"))]
        predict = client.post("/predict/mnist", files=files)
        v2 = client.post("/v2/models/mnist/infer", json=bytes_request(body, encode(draw_digit(7))))
        assert predict.status_code == 200 and v2.status_code == 200
        batcher = batcher_of(client)
        return {"predict": predict.json(), "v2": v2.json()}, batcher.lane_requests, batcher.counters["mnist"].requests


def test_a_big_image_goes_through_the_lane_with_the_plain_paths_results(tiny_repository: Path) -> None:
    big = encode(draw_digit(2, size=1500))  # 2.25 MP: over the default threshold
    laned, lane_requests, batched = _predict_both_ways(tiny_repository, Settings().heavy_request_pixels, big)
    inline, inline_lane_requests, _ = _predict_both_ways(tiny_repository, 10**9, big)
    assert lane_requests == 2 and inline_lane_requests == 0  # /predict and /v2 each once
    assert batched == 2  # the lane's requests still joined the batcher's queue
    assert laned == inline  # bit for bit: same decode, same forward


def test_small_uploads_skip_the_lane_and_a_bad_heavy_upload_fails_alone(app_client: TestClient) -> None:
    small = app_client.post("/predict/mnist", content=encode(draw_digit(5)), headers={"Content-Type": "image/png"})
    assert small.status_code == 200 and batcher_of(app_client).lane_requests == 0
    big = encode(draw_digit(2, size=1500))
    truncated = big[: len(big) // 2]  # the header is fine: it fails only when decoded, in the lane
    response = app_client.post("/predict/mnist", content=truncated, headers={"Content-Type": "image/png"})
    assert response.status_code == 415 and batcher_of(app_client).lane_requests == 1
    assert batcher_of(app_client).counters["mnist"].failed_requests == 1
    again = app_client.post("/predict/mnist", content=big, headers={"Content-Type": "image/png"})
    assert again.status_code == 200 and batcher_of(app_client).lane_requests == 2
    # Small images, but many: each costs a fixed amount whatever its size, so together they are heavy.
    many = [("file", (f"{i}.png", encode(draw_digit(i % 10, size=28)), "image/png")) for i in range(8)]
    answers = app_client.post("/predict/mnist", files=many)
    assert answers.status_code == 200 and len(answers.json()) == 8 and batcher_of(app_client).lane_requests == 3
