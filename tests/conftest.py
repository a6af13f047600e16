"""Shared fixtures: the official datasets (found or downloaded once) and a small repository of tiny real models."""

from __future__ import annotations

import io
import os
import tempfile
import uuid
from collections.abc import Iterator
from functools import cache
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from app.core.settings import Settings
from app.main import create_app
from training.config import TrainConfig
from training.data import DATASETS, LoadedDataset, load_dataset
from training.datasets import resolve_dataset
from training.export import export_model
from training.loop import train

ROOT = Path(__file__).resolve().parent.parent
SHIPPED_MODELS = ROOT / "models"


def dataset_dir(name: str) -> Path:
    """The folder of a set's IDX files: PIXELSERVE_DATA_DIR, ../shared/datasets, the user cache, else downloaded."""
    return resolve_dataset(name)


@cache
def _data_root() -> Path:
    """One folder holding mnist/ and fashion-mnist/, for the scripts that take a root."""
    folders = {name: dataset_dir(name) for name in DATASETS}
    parents = {folder.parent for folder in folders.values()}
    if len(parents) == 1:
        return parents.pop()
    root = Path(tempfile.mkdtemp(prefix="pixelserve-datasets-"))  # the sets came from different places
    for name, folder in folders.items():
        (root / name).symlink_to(folder, target_is_directory=True)
    return root


def __getattr__(name: str) -> Path:
    # DATA_ROOT is resolved on first import by a test module, not when pytest loads this conftest:
    # a run that needs no dataset never downloads one.
    if name == "DATA_ROOT":
        return _data_root()
    raise AttributeError(name)


@pytest.fixture(scope="session")
def mnist() -> LoadedDataset:
    return load_dataset("mnist")


@pytest.fixture(scope="session")
def fashion() -> LoadedDataset:
    return load_dataset("fashion-mnist")


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


POSTGRES_URL = os.environ.get("PIXELSERVE_TEST_POSTGRES_URL")  # e.g. postgresql+psycopg://u:p@127.0.0.1/db


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, empty job store: an SQLite file, or a new database on the test PostgreSQL server."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'jobs.sqlite'}"
        return
    if not POSTGRES_URL:
        if os.environ.get("CI"):
            pytest.fail("CI must provide PostgreSQL: set PIXELSERVE_TEST_POSTGRES_URL (see .ci/run)")
        pytest.skip("no PostgreSQL: set PIXELSERVE_TEST_POSTGRES_URL to run the job store against it")
    from sqlalchemy import create_engine, text

    name = f"pixelserve_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f"CREATE DATABASE {name}"))
    try:
        yield POSTGRES_URL.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with admin.connect() as conn:
            conn.execute(text(f"DROP DATABASE {name} WITH (FORCE)"))
        admin.dispose()
