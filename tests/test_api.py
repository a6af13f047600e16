"""The HTTP contract through the real app (TestClient): routes, bodies, every error status."""

from __future__ import annotations

import gc
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from app.core.settings import Settings
from app.main import create_app
from tests.helpers import encode
from tests.images import draw_digit
from training.data import FASHION_LABELS, LoadedDataset


def test_health(client: TestClient) -> None:
    assert client.get("/health/live").json()["status"] == "live"
    ready = client.get("/health/ready")
    assert ready.status_code == 200 and ready.json()["models"] == {"fashion": "1", "mnist": "1"}


def test_not_ready_when_a_configured_model_is_missing(tiny_repository: Path) -> None:
    settings = Settings(model_repository=tiny_repository, models=["mnist", "cifar"])
    with TestClient(create_app(settings)) as client:
        response = client.get("/health/ready")
        assert response.status_code == 503
        assert "cifar" in response.json()["error"]
        assert client.get("/health/live").status_code == 200
        assert client.get("/models/cifar").json()["error"].startswith("no version")


def test_models_listing(client: TestClient) -> None:
    listing = {m["name"]: m for m in client.get("/models").json()}
    assert set(listing) == {"mnist", "fashion"}
    assert listing["fashion"]["labels"] == list(FASHION_LABELS)
    assert listing["mnist"]["architecture"] == "mnist_cnn" and listing["mnist"]["versions"] == ["1"]
    detail = client.get("/models/fashion").json()
    assert detail["served_version"] == "1" and 0 < detail["test_accuracy"] <= 1
    assert detail["created_at"] and detail["metadata"]["confusion_matrix"]
    assert detail["version_details"][0]["weights_sha256"] == detail["metadata"]["weights_sha256"]
    missing = client.get("/models/nope")
    assert missing.status_code == 404 and "fashion, mnist" in missing.json()["error"]


def test_predict_multipart_and_raw_body(client: TestClient, fashion: LoadedDataset) -> None:
    image = encode(fashion.test.images[0].numpy())
    multipart = client.post("/predict/fashion", files={"file": ("shoe.png", image, "image/png")})
    assert multipart.status_code == 200
    body = multipart.json()
    assert body["model"] == "fashion" and body["version"] == "1"
    assert list(body["probabilities"]) == list(FASHION_LABELS)  # every class, in class order
    assert sum(body["probabilities"].values()) == pytest.approx(1.0, abs=1e-9)
    assert body["label"] == FASHION_LABELS[body["index"]]
    assert body["confidence"] == max(body["probabilities"].values())
    raw = client.post("/predict/fashion", content=image, headers={"Content-Type": "image/png"})
    assert raw.json() == body
    octet = client.post("/predict/fashion", content=image, headers={"Content-Type": "application/octet-stream"})
    assert octet.json() == body


def test_top_k(client: TestClient) -> None:
    body = client.post(
        "/predict/mnist?top_k=3", content=encode(draw_digit(4)), headers={"Content-Type": "image/png"}
    ).json()
    top = body["top_k"]
    assert len(top) == 3 and top[0]["label"] == body["label"]
    assert [t["probability"] for t in top] == sorted((t["probability"] for t in top), reverse=True)
    assert (
        "top_k"
        not in client.post(
            "/predict/mnist", content=encode(draw_digit(4)), headers={"Content-Type": "image/png"}
        ).json()
    )


@pytest.mark.parametrize(
    "path,kwargs,status,code",
    [
        ("/predict/cifar", {"content": b"x", "headers": {"Content-Type": "image/png"}}, 404, "model_not_found"),
        (
            "/predict/mnist",
            {"content": b"GIF89a garbage", "headers": {"Content-Type": "image/gif"}},
            415,
            "unsupported_media_type",
        ),
        ("/predict/mnist", {"files": {"file": ("a.txt", b"hello", "text/plain")}}, 415, "unsupported_media_type"),
        ("/predict/mnist", {"json": {"image": "x"}}, 415, "unsupported_media_type"),
        ("/predict/mnist", {}, 422, "missing_file"),
        ("/predict/mnist", {"files": {"file": ("a.png", b"", "image/png")}}, 422, "missing_file"),
        ("/predict/mnist", {"files": {"picture": ("a.png", b"123", "image/png")}}, 422, "missing_file"),
        ("/predict/mnist", {"content": b"", "headers": {"Content-Type": "image/png"}}, 422, "missing_file"),
        (
            "/predict/mnist?top_k=0",
            {"content": b"x", "headers": {"Content-Type": "image/png"}},
            422,
            "validation_error",
        ),
        (
            "/predict/mnist",
            {"files": [("file", ("a.png", b"1", "image/png")), ("file", ("b.png", b"2", "image/png"))]},
            415,
            "unsupported_media_type",
        ),
        (
            "/predict/mnist",
            {"data": {f"field{i}": "x" for i in range(9)}, "files": {"file": ("a.png", b"1", "image/png")}},
            400,
            "malformed_request",
        ),
    ],
)
def test_error_statuses(client: TestClient, path: str, kwargs: dict[str, object], status: int, code: str) -> None:
    response = client.post(path, **kwargs)  # type: ignore[arg-type]
    assert response.status_code == status
    assert response.json()["code"] == code and response.json()["error"]


def test_blank_image_is_422(client: TestClient) -> None:
    response = client.post(
        "/predict/mnist", content=encode(np.zeros((28, 28), np.uint8)), headers={"Content-Type": "image/png"}
    )
    assert response.status_code == 422 and "blank" in response.json()["error"]


def test_body_limit(tiny_repository: Path) -> None:
    settings = Settings(model_repository=tiny_repository, max_body_bytes=50_000, max_image_pixels=1_000_000)
    with TestClient(create_app(settings)) as client:
        big = encode(np.random.default_rng(0).integers(0, 255, (300, 300), dtype=np.uint8))  # ~90 kB of noise
        declared = client.post("/predict/mnist", content=big, headers={"Content-Type": "image/png"})
        assert declared.status_code == 413 and declared.json()["code"] == "body_too_large"
        chunked = client.post(
            "/predict/mnist", content=iter([big[:40_000], big[40_000:]]), headers={"Content-Type": "image/png"}
        )
        assert chunked.status_code == 413
        multipart = client.post("/predict/mnist", files={"file": ("a.png", big, "image/png")})
        assert multipart.status_code == 413
        pixels = client.post(
            "/predict/mnist", content=encode(draw_digit(1, size=1200)), headers={"Content-Type": "image/png"}
        )
        assert pixels.status_code == 413 and pixels.json()["code"] == "image_too_large"


def test_openapi_declares_every_status(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    predict = spec["paths"]["/predict/{name}"]["post"]
    assert {"200", "400", "404", "413", "415", "422"} <= set(predict["responses"])
    assert {"multipart/form-data", "image/*"} <= set(predict["requestBody"]["content"])
    assert "503" in spec["paths"]["/health/ready"]["get"]["responses"]
    assert "404" in spec["paths"]["/models/{name}"]["get"]["responses"]


def test_settings_fail_fast(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValidationError, match="not a directory"):
        Settings(model_repository=tmp_path / "absent")
    monkeypatch.setenv("PIXELSERVE_MAX_BODY_BYTES", "lots")
    with pytest.raises(ValidationError, match="max_body_bytes"):
        Settings(model_repository=tmp_path)
    monkeypatch.delenv("PIXELSERVE_MAX_BODY_BYTES")
    monkeypatch.setenv("PIXELSERVE_MODELS", "mnist, fashion")
    monkeypatch.setenv("PIXELSERVE_LOG_LEVEL", "WARNING")
    settings = Settings(model_repository=tmp_path)
    assert settings.models == ["mnist", "fashion"] and settings.log_level == "warning"


def test_corrupt_artifact_is_refused_not_served(tmp_path: Path, tiny_repository: Path) -> None:
    source = tiny_repository / "mnist" / "1" / "model.pt"
    (tmp_path / "mnist" / "1").mkdir(parents=True)
    (tmp_path / "mnist" / "1" / "model.pt").write_bytes(source.read_bytes()[:-200])
    with TestClient(create_app(Settings(model_repository=tmp_path, models=["mnist"]))) as client:
        assert client.get("/health/ready").status_code == 503
        assert client.get("/models/mnist").json()["error"]
        # Configured but refused: 503 with the reason (a name nobody configured is the 404).
        refused = client.post("/predict/mnist", content=b"x", headers={"Content-Type": "image/png"})
        assert refused.status_code == 503 and "refused" in refused.json()["error"]


def test_start_up_objects_are_frozen_out_of_the_garbage_collector(client: TestClient) -> None:
    assert gc.get_freeze_count() > 10_000  # torch, FastAPI and the models: never scanned again
