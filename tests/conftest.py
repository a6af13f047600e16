"""Shared fixtures: the official datasets on disk and a small repository of tiny real models."""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from app.main import create_app
from app.settings import Settings
from training.config import TrainConfig
from training.data import LoadedDataset, load_dataset
from training.export import export_model
from training.loop import train

ROOT = Path(__file__).resolve().parent.parent
DATA_ROOT = Path(os.environ.get("PIXELSERVE_DATA_DIR", ROOT.parent / "shared" / "datasets"))
SHIPPED_MODELS = ROOT / "models"


def dataset_dir(name: str) -> Path:
    folder = DATA_ROOT / name
    if not folder.is_dir():
        pytest.fail(
            f"dataset folder {folder} is missing: set PIXELSERVE_DATA_DIR to a folder holding mnist/ and fashion-mnist/"
        )
    return folder


@pytest.fixture(scope="session")
def mnist() -> LoadedDataset:
    return load_dataset("mnist", dataset_dir("mnist"))


@pytest.fixture(scope="session")
def fashion() -> LoadedDataset:
    return load_dataset("fashion-mnist", dataset_dir("fashion-mnist"))


def tiny_config(model: str, architecture: str, dataset: str, samples: int = 2048) -> TrainConfig:
    return TrainConfig(
        model_name=model, architecture=architecture, dataset=dataset, epochs=1, batch_size=64,
        max_samples=samples, seed=0, device="cpu",
    )  # fmt: skip


@pytest.fixture(scope="session")
def tiny_repository(tmp_path_factory: pytest.TempPathFactory, mnist: LoadedDataset, fashion: LoadedDataset) -> Path:
    """models/ with a small `mnist` (mnist_cnn) and `fashion` (fashion_dnn), each trained for seconds."""
    root = tmp_path_factory.mktemp("models")
    for data, config in (
        (mnist, tiny_config("mnist", "mnist_cnn", "mnist")),
        (fashion, tiny_config("fashion", "fashion_dnn", "fashion-mnist")),
    ):
        result = train(config, data, progress=False)
        export_model(root, config.model_name, config, data, result)
    return root


@pytest.fixture()
def client(tiny_repository: Path) -> Iterator[TestClient]:
    with TestClient(create_app(Settings(model_repository=tiny_repository))) as test_client:
        yield test_client


def encode(pixels: np.ndarray | Image.Image, fmt: str = "PNG", **options: object) -> bytes:
    image = pixels if isinstance(pixels, Image.Image) else Image.fromarray(pixels)
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()
