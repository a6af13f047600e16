"""Admin routes through the real app: every auth case, validation, idempotency, cancel, activation."""

from __future__ import annotations

import shutil
import typing
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from app.core.catalogue import Architecture, DatasetName
from app.core.repository import ModelRepository
from app.core.settings import Settings
from app.main import create_app
from tests.helpers import tiny_config
from training.data import DATASETS, LoadedDataset
from training.export import export_model
from training.loop import train
from training.networks import architecture_names

AUTH = {"Authorization": "Bearer s3cret"}
JOB = {"model": "mnist", "architecture": "mnist_cnn", "dataset": "mnist", "epochs": 1, "max_samples": 256}


@pytest.fixture()
def repository(tmp_path: Path, tiny_repository: Path, mnist: LoadedDataset) -> Path:
    """A writable copy of the tiny repository with a second mnist version."""
    root = tmp_path / "models"
    shutil.copytree(tiny_repository, root)
    config = tiny_config("mnist", "mlp", "mnist", samples=256)
    export_model(root, "mnist", config, mnist, train(config, mnist, progress=False))
    return root


@pytest.fixture()
def admin(repository: Path) -> Iterator[TestClient]:
    settings = Settings(model_repository=repository, admin_token="s3cret", reload_interval_s=0)
    with TestClient(create_app(settings)) as client:
        yield client


def test_app_lists_match_the_training_registries() -> None:
    assert sorted(typing.get_args(Architecture)) == architecture_names()
    assert sorted(typing.get_args(DatasetName)) == sorted(DATASETS)


@pytest.mark.parametrize(
    "method,path",
    [
        ("POST", "/train"),
        ("GET", "/train"),
        ("GET", "/train/1"),
        ("POST", "/train/1/cancel"),
        ("POST", "/models/mnist/versions/1/activate"),
    ],
)
def test_every_auth_case(repository: Path, admin: TestClient, method: str, path: str) -> None:
    body = JOB if path == "/train" else None
    assert admin.request(method, path, json=body).status_code == 401
    assert admin.request(method, path, json=body).headers["WWW-Authenticate"] == "Bearer"
    assert admin.request(method, path, json=body, headers={"Authorization": "Bearer nope"}).status_code == 403
    assert admin.request(method, path, json=body, headers={"Authorization": "Basic s3cret"}).status_code == 403
    assert admin.get("/train", headers=AUTH).json() == []  # nothing happened
    with TestClient(create_app(Settings(model_repository=repository, admin_token=""))) as closed:
        refused = closed.request(method, path, json=body, headers=AUTH)
        assert refused.status_code == 403 and "PIXELSERVE_ADMIN_TOKEN" in refused.json()["error"]


def test_start_and_read_a_job(admin: TestClient) -> None:
    response = admin.post("/train", json=JOB, headers=AUTH)
    assert response.status_code == 202
    job = response.json()
    assert response.headers["Location"] == f"/train/{job['id']}"
    assert job["status"] == "queued" and job["request"]["epochs"] == 1 and job["progress"] is None
    assert admin.get(response.headers["Location"], headers=AUTH).json()["id"] == job["id"]
    second = admin.post("/train", json={**JOB, "model": "fashion", "architecture": "fashion_dnn",
                                        "dataset": "fashion-mnist"}, headers=AUTH).json()  # fmt: skip
    assert [j["id"] for j in admin.get("/train", headers=AUTH).json()] == [second["id"], job["id"]]
    assert admin.get("/train/999", headers=AUTH).status_code == 404


def test_idempotency_key(admin: TestClient) -> None:
    first = admin.post("/train", json=JOB, headers={**AUTH, "Idempotency-Key": "k1"})
    again = admin.post("/train", json=JOB, headers={**AUTH, "Idempotency-Key": "k1"})
    assert first.status_code == 202 and again.status_code == 200
    assert again.json()["id"] == first.json()["id"]
    in_body = admin.post("/train", json={**JOB, "idempotency_key": "k1"}, headers=AUTH)
    assert in_body.json()["id"] == first.json()["id"]
    assert len(admin.get("/train", headers=AUTH).json()) == 1


@pytest.mark.parametrize("where", ["header", "body"])
def test_idempotency_key_with_a_different_body_is_a_conflict(admin: TestClient, where: str) -> None:
    def post(body: dict[str, object]) -> httpx.Response:
        if where == "header":
            return admin.post("/train", json=body, headers={**AUTH, "Idempotency-Key": "k-9"})
        return admin.post("/train", json={**body, "idempotency_key": "k-9"}, headers=AUTH)

    first = post(JOB)
    assert first.status_code == 202
    for changed in ({**JOB, "epochs": 2}, {**JOB, "lr": 0.01}, {**JOB, "model": "other"}):
        refused = post(changed)
        assert refused.status_code == 409 and refused.json()["code"] == "conflict"
        assert "'k-9'" in refused.json()["error"] and str(first.json()["id"]) in refused.json()["error"]
    # Defaults spelled out are the same request as defaults left out: the stored body is normalised.
    same = post({**JOB, "batch_size": 128, "lr": 3e-3, "augment": True})
    assert same.status_code == 200 and same.json()["id"] == first.json()["id"]
    assert len(admin.get("/train", headers=AUTH).json()) == 1


@pytest.mark.parametrize("job_id", [2**63, 2**64, -1, 0])
def test_ids_no_job_can_have_are_not_found(admin: TestClient, job_id: int) -> None:
    admin.post("/train", json=JOB, headers=AUTH)
    for response in (admin.get(f"/train/{job_id}", headers=AUTH), admin.post(f"/train/{job_id}/cancel", headers=AUTH)):
        assert response.status_code == 404
        assert response.json() == {"error": f"no training job {job_id}", "code": "job_not_found"}


@pytest.mark.parametrize(
    "change,needle",
    [
        ({"architecture": "resnet"}, "'cnn5', 'fashion_cnn', 'fashion_dnn', 'fashion_vgg', 'mlp' or 'mnist_cnn'"),
        ({"dataset": "cifar"}, "'fashion-mnist' or 'mnist'"),
        ({"epochs": 0}, "epochs"),
        ({"epochs": 1000}, "epochs"),
        ({"batch_size": 1}, "batch_size"),
        ({"lr": 0}, "lr"),
        ({"max_samples": 10}, "max_samples"),
        ({"model": "../etc"}, "model"),
        ({"colour": "red"}, "colour"),
    ],
)
def test_validation_names_what_is_wrong(admin: TestClient, change: dict[str, object], needle: str) -> None:
    response = admin.post("/train", json={**JOB, **change}, headers=AUTH)
    assert response.status_code == 422
    assert needle in response.json()["error"]


def test_cancel(admin: TestClient) -> None:
    job = admin.post("/train", json=JOB, headers=AUTH).json()
    cancelled = admin.post(f"/train/{job['id']}/cancel", headers=AUTH)
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    assert admin.post(f"/train/{job['id']}/cancel", headers=AUTH).status_code == 409
    assert admin.post("/train/999/cancel", headers=AUTH).status_code == 404


def test_activate_pins_and_rolls_back(admin: TestClient, repository: Path) -> None:
    assert admin.get("/models/mnist").json()["served_version"] == "2"
    response = admin.post("/models/mnist/versions/1/activate", headers=AUTH)
    assert response.status_code == 200 and response.json() == {"model": "mnist", "version": "1", "pinned": True}
    assert ModelRepository(repository).read_pointer("mnist") == ("1", True)
    assert admin.get("/models/mnist").json()["served_version"] == "1"  # this replica at once
    unpinned = admin.post("/models/mnist/versions/2/activate", json={"pin": False}, headers=AUTH)
    assert unpinned.json()["pinned"] is False
    missing = admin.post("/models/mnist/versions/7/activate", headers=AUTH)
    assert missing.status_code == 404 and "versions: 1, 2" in missing.json()["error"]
    (repository / "mnist" / "2" / "model.pt").write_bytes(b"broken")
    assert admin.post("/models/mnist/versions/2/activate", headers=AUTH).status_code == 409


def test_openapi_declares_admin_statuses(admin: TestClient) -> None:
    paths = admin.get("/openapi.json").json()["paths"]
    assert {"202", "200", "401", "403", "409", "422"} <= set(paths["/train"]["post"]["responses"])
    assert {"401", "403", "404", "409"} <= set(paths["/train/{job_id}/cancel"]["post"]["responses"])
    assert {"401", "403", "404", "409"} <= set(paths["/models/{name}/versions/{version}/activate"]["post"]["responses"])
