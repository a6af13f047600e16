"""Shared fixtures: the official datasets (found or downloaded once) and a small repository of tiny real models."""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.core.settings import Settings
from app.main import create_app
from tests.helpers import POSTGRES_URL, tiny_config
from training.data import LoadedDataset, load_dataset
from training.export import export_model
from training.loop import train


@pytest.fixture(scope="session")
def mnist() -> LoadedDataset:
    return load_dataset("mnist")


@pytest.fixture(scope="session")
def fashion() -> LoadedDataset:
    return load_dataset("fashion-mnist")


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
def repository(tmp_path: Path, tiny_repository: Path) -> Path:
    """A copy of `tiny_repository` a test may change (publish, delete, corrupt) without touching the others'."""
    root = tmp_path / "models"
    shutil.copytree(tiny_repository, root)
    return root


@pytest.fixture()
def client(tiny_repository: Path) -> Iterator[TestClient]:
    with TestClient(create_app(Settings(model_repository=tiny_repository))) as test_client:
        yield test_client


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
