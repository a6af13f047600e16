"""Hot reload in one replica: a new CURRENT is loaded, a broken version is refused and the old one serves."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient

from app.core.artifacts import METADATA_FILE, read_metadata
from app.core.repository import ModelRepository
from app.core.settings import Settings
from app.main import create_app
from tests.helpers import encode
from tests.images import draw_digit

IMAGE = {"content": encode(draw_digit(1)), "headers": {"Content-Type": "image/png"}}


@pytest.fixture()
def client(repository: Path) -> Iterator[TestClient]:
    with TestClient(create_app(Settings(model_repository=repository, reload_interval_s=0))) as test_client:
        yield test_client


def save_with_metadata(source: Path, target: Path, **changes: object) -> None:
    """Re-save a TorchScript artifact with some metadata fields changed."""
    metadata = {**read_metadata(source), **changes}
    module = torch.jit.load(str(source))
    target.parent.mkdir(exist_ok=True)
    torch.jit.save(module, str(target), _extra_files={METADATA_FILE: json.dumps(metadata)})


@pytest.mark.filterwarnings("ignore:`torch.jit")
def test_new_version_is_swapped_in_and_broken_one_refused(client: TestClient, repository: Path) -> None:
    registry = client.app.state.registry  # type: ignore[attr-defined]
    original = repository / "mnist" / "1" / "model.pt"
    assert client.post("/predict/mnist", **IMAGE).json()["version"] == "1"
    save_with_metadata(original, repository / "mnist" / "2" / "model.pt", version="2")
    assert registry.refresh() == ["mnist"]
    assert client.post("/predict/mnist", **IMAGE).json()["version"] == "2"

    # Version 3: weights that do not match the SHA-256 in its metadata.
    save_with_metadata(original, repository / "mnist" / "3" / "model.pt", version="3", weights_sha256="0" * 64)
    assert registry.refresh() == []
    detail = client.get("/models/mnist").json()
    assert detail["served_version"] == "2" and "version 3 refused" in detail["error"] and "SHA-256" in detail["error"]
    assert client.post("/predict/mnist", **IMAGE).json()["version"] == "2"
    assert client.get("/health/ready").status_code == 200  # still serving: still ready
    assert registry.refresh() == []  # a refused version is not retried on every poll

    # An admin's pointer back to version 1 is followed.
    ModelRepository(repository).write_pointer("mnist", "1", pinned=True)
    assert registry.refresh() == ["mnist"]
    assert client.get("/models/mnist").json()["error"] is None


def test_staging_folders_and_garbage_are_never_loaded(client: TestClient, repository: Path) -> None:
    staging = repository / "mnist" / ".staging-crashed"
    staging.mkdir()
    (staging / "model.pt").write_bytes(b"half written")
    (repository / "mnist" / "CURRENT").write_text("{not json")
    assert ModelRepository(repository).versions("mnist") == ["1"]
    assert ModelRepository(repository).current_version("mnist") == "1"
    assert client.app.state.registry.refresh() == []  # type: ignore[attr-defined]
    assert client.post("/predict/mnist", **IMAGE).status_code == 200
