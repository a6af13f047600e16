"""The artifacts shipped in models/: accuracy through HTTP, and images from outside the datasets."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import ImageFilter

from app.core.settings import Settings
from app.main import create_app
from tests.helpers import SHIPPED_MODELS, encode
from tests.images import dataset_image_on_paper, draw_digit
from training.data import LoadedDataset


@pytest.fixture(scope="module")
def shipped() -> Iterator[TestClient]:
    with TestClient(create_app(Settings(model_repository=SHIPPED_MODELS))) as client:
        assert client.get("/health/ready").json()["models"].keys() >= {"mnist", "fashion"}
        yield client


def http_accuracy(client: TestClient, model: str, images: list[bytes], labels: list[str]) -> float:
    hits = 0
    for data, label in zip(images, labels, strict=True):
        response = client.post(f"/predict/{model}", content=data, headers={"Content-Type": "image/png"})
        assert response.status_code == 200, response.text
        hits += response.json()["label"] == label
    return hits / len(images)


@pytest.mark.parametrize("model,threshold", [("mnist", 0.99), ("fashion", 0.90)])
def test_first_thousand_official_test_images_over_http(
    shipped: TestClient, mnist: LoadedDataset, fashion: LoadedDataset, model: str, threshold: float
) -> None:
    data = mnist if model == "mnist" else fashion
    images = [encode(img) for img in data.test.images[:1000].numpy()]
    labels = [data.spec.labels[i] for i in data.test.labels[:1000].tolist()]
    accuracy = http_accuracy(shipped, model, images, labels)
    assert accuracy >= threshold, accuracy
    metadata = shipped.get(f"/models/{model}").json()
    assert metadata["test_accuracy"] >= (0.994 if model == "mnist" else 0.930)


def test_typed_digits_in_other_hands(shipped: TestClient) -> None:
    """Digits no MNIST writer drew: a typeface, rotated, thin and thick pens, photographed as JPEG."""
    images, labels = [], []
    for digit in range(10):
        for rotate in (-10, 0, 10):
            for pen in (None, ImageFilter.MinFilter(5)):  # MinFilter thickens dark ink
                image = draw_digit(digit, size=160, rotate=rotate)
                image = image.filter(pen) if pen else image
                images.append(encode(image.convert("RGB"), "JPEG", quality=85))
                labels.append(str(digit))
    assert http_accuracy(shipped, "mnist", images, labels) >= 0.85


def test_garments_as_product_shots(shipped: TestClient, fashion: LoadedDataset) -> None:
    """Test garments as a shop's photos: dark product on white, enlarged, off-centre, JPEG."""
    rng = np.random.default_rng(0)
    picks = rng.choice(10000, size=200, replace=False)
    images = [encode(dataset_image_on_paper(fashion.test.images[i].numpy()).convert("RGB"), "JPEG") for i in picks]
    labels = [fashion.spec.labels[int(fashion.test.labels[i])] for i in picks]
    assert http_accuracy(shipped, "fashion", images, labels) >= 0.85


def test_handwritten_digits_as_scans(shipped: TestClient, mnist: LoadedDataset) -> None:
    """MNIST test digits as a scan of paper: dark ink on white, 8x larger, off-centre, JPEG."""
    picks = range(2000, 2200)
    images = [encode(dataset_image_on_paper(mnist.test.images[i].numpy()).convert("RGB"), "JPEG") for i in picks]
    labels = [str(int(mnist.test.labels[i])) for i in picks]
    assert http_accuracy(shipped, "mnist", images, labels) >= 0.97
