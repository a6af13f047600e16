"""Regression tests for defects found by attacking a running server (issue 9's items 3, 4, 6, 8-11, 14).

Each test names the item it pins. The ones about what crosses the wire (a body never read, a
disconnect mid-upload) run against a real uvicorn process; the rest against the real app.
"""

from __future__ import annotations

import json
import shutil
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient

from app.core.artifacts import METADATA_FILE, read_metadata
from app.core.settings import Settings
from app.main import create_app
from tests.helpers import encode
from tests.images import draw_digit
from tests.processes import replicas

TOKEN = "s3cret"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
IMAGE = {"content": encode(draw_digit(1)), "headers": {"Content-Type": "image/png"}}
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit")


def app_client(repository: Path, **settings: object) -> TestClient:
    base: dict[str, object] = {"model_repository": repository, "reload_interval_s": 0, "admin_token": TOKEN}
    base["job_store_url"] = f"sqlite:///{repository.parent / 'jobs.sqlite'}"
    return TestClient(create_app(Settings(**{**base, **settings})))  # type: ignore[arg-type]


def resave(source: Path, target: Path, metadata: bytes) -> None:
    """The same TorchScript module under `target` with these raw metadata bytes embedded."""
    module = torch.jit.load(str(source))
    target.parent.mkdir(parents=True, exist_ok=True)
    torch.jit.save(module, str(target), _extra_files={METADATA_FILE: metadata})


def with_version(source: Path, version: str) -> bytes:
    return json.dumps({**read_metadata(source), "version": version}).encode()


# -- 3: admin routes authenticate before they read a body ------------------------------------------


@pytest.fixture(scope="module")
def server(tiny_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    logs = tmp_path_factory.mktemp("server")
    env = {
        "PIXELSERVE_MODEL_REPOSITORY": str(tiny_repository),
        "PIXELSERVE_ADMIN_TOKEN": TOKEN,
        "PIXELSERVE_JOB_STORE_URL": f"sqlite:///{logs / 'jobs.sqlite'}",
        "PIXELSERVE_RELOAD_INTERVAL_S": "0",
    }
    with replicas(env, 1, logs) as (url,):
        yield url.removeprefix("http://"), logs / "replica-0.log"


def raw_request(address: str, head: str, body: bytes = b"", read: bool = True) -> bytes:
    """Send a request head and (part of) a body on a fresh connection; the answer's bytes."""
    host, port = address.split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(head.replace("\n", "\r\n").encode() + b"\r\n" + body)
        if not read:
            return b""
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
            if b"\r\n\r\n" in answer and b'"}' in answer:
                break
        return answer


def test_admin_body_is_never_read_without_a_token(server: tuple[str, Path]) -> None:
    address, _ = server
    # A 9 MB body is announced but only 100 bytes are sent: the 401 comes back without waiting for it.
    head = f"POST /train HTTP/1.1\nHost: x\nContent-Type: application/json\nContent-Length: {9_000_000}\n"
    answer = raw_request(address, head, b"[" * 100)
    assert answer.startswith(b"HTTP/1.1 401") and b'"code":"unauthorized"' in answer
    assert b"www-authenticate: Bearer" in answer.lower().replace(b"bearer", b"Bearer")


def test_malformed_json_without_a_token_is_401_not_400(repository: Path) -> None:
    with app_client(repository) as client:
        for headers in ({}, {"Authorization": "Bearer wrong"}):
            refused = client.post(
                "/train", content=b"{not json", headers={**headers, "Content-Type": "application/json"}
            )
            assert refused.status_code == (401 if not headers else 403), refused.text
        nested = client.post("/train", content=b"[" * 5000, headers={**AUTH, "Content-Type": "application/json"})
        assert nested.status_code in (400, 422) and nested.json()["code"]


def test_admin_bodies_are_small_declared_or_streamed(repository: Path) -> None:
    big = b'{"model": "mnist", "x": "' + b"a" * 70_000 + b'"}'
    with app_client(repository) as client:
        declared = client.post("/train", content=big, headers={**AUTH, "Content-Type": "application/json"})
        streamed = client.post(
            "/train", content=iter([big[:40_000], big[40_000:]]), headers={**AUTH, "Content-Type": "application/json"}
        )
        for answer in (declared, streamed):
            assert answer.status_code == 413 and answer.json()["code"] == "body_too_large", answer.text
        ok = client.post(
            "/train", json={"model": "mnist", "architecture": "mnist_cnn", "dataset": "mnist"}, headers=AUTH
        )
        assert ok.status_code == 202


# -- 11: a client that leaves mid-upload is one log line -------------------------------------------


def test_disconnect_mid_upload_logs_one_line(server: tuple[str, Path]) -> None:
    address, log = server
    before = log.read_bytes()
    head = "POST /predict/mnist HTTP/1.1\nHost: x\nContent-Type: image/png\nContent-Length: 100000\n"
    raw_request(address, head, b"\x89PNG" + b"0" * 500, read=False)
    time.sleep(1.0)
    after = log.read_bytes()[len(before) :].decode()
    assert "Traceback" not in after
    assert after.count("client disconnected") == 1, after


# -- 6: a header length of 4,300+ digits -----------------------------------------------------------


def test_huge_inference_header_length_is_400(repository: Path) -> None:
    with app_client(repository) as client:
        body = json.dumps(
            {"inputs": [{"name": "images", "datatype": "UINT8", "shape": [1, 28, 28], "data": [0] * 784}]}
        )
        answer = client.post(
            "/v2/models/mnist/infer",
            content=body,
            headers={"Content-Type": "application/octet-stream", "Inference-Header-Content-Length": "9" * 5000},
        )
        assert answer.status_code == 400 and answer.json()["code"] == "invalid_inference_request"
        assert len(answer.json()["error"]) < 300  # the header is not echoed back whole


# -- 4: one unreadable artifact is a refusal of that version only ----------------------------------


def test_unreadable_metadata_refuses_only_that_version(repository: Path) -> None:
    original = repository / "mnist" / "1" / "model.pt"
    resave(original, repository / "mnist" / "2" / "model.pt", b'{"name": "\xff\xfe not utf-8"}')
    with app_client(repository) as client:  # start-up goes on
        assert client.get("/health/ready").status_code == 200
        detail = client.get("/models/mnist")
        assert detail.status_code == 200 and detail.json()["served_version"] == "1"
        assert "version 2 refused" in detail.json()["error"]
        broken = next(v for v in detail.json()["version_details"] if v["version"] == "2")
        assert "metadata.json" in broken["error"]
        assert client.get("/models").status_code == 200
        activate = client.post("/models/mnist/versions/2/activate", headers=AUTH)
        assert activate.status_code == 409 and activate.json()["code"] == "conflict"

        # Hot reload of the other models goes on: fashion's new version is picked up in the same refresh.
        fashion = repository / "fashion" / "1" / "model.pt"
        resave(fashion, repository / "fashion" / "2" / "model.pt", with_version(fashion, "2"))
        resave(original, repository / "mnist" / "3" / "model.pt", b"[1, 2, 3]")  # JSON, but not an object
        registry = client.app.state.registry  # type: ignore[attr-defined]
        assert registry.refresh() == ["fashion"]
        assert client.post("/predict/fashion", **IMAGE).json()["version"] == "2"


# -- 8, 9: names and versions cannot reach outside the repository ----------------------------------


def test_activate_validates_names_and_stays_inside_the_repository(repository: Path) -> None:
    # A digit-named folder holding a valid artifact right beside the repository, and a dot-folder inside it.
    outside = repository.parent / "1"
    outside.mkdir()
    shutil.copy(repository / "mnist" / "1" / "model.pt", outside / "model.pt")
    shutil.copytree(repository / "mnist", repository / ".hidden")
    with app_client(repository) as client:
        for path in ("/models/%2e%2e/versions/1/activate", "/models/.hidden/versions/1/activate",
                     f"/models/{'m' * 300}/versions/1/activate", "/models/mnist/versions/01/activate",
                     "/models/mnist/versions/%C2%B2/activate"):  # fmt: skip
            answer = client.post(path, headers=AUTH)
            assert answer.status_code == 404 and answer.json()["code"] == "version_not_found", (path, answer.text)
    assert not (repository.parent / "CURRENT").exists() and not (repository / ".hidden" / "CURRENT").exists()


def test_non_ascii_digit_folders_are_not_versions(repository: Path) -> None:
    shutil.copytree(repository / "mnist" / "1", repository / "mnist" / "²")
    shutil.copytree(repository / "mnist" / "1", repository / "mnist" / "٣")  # an Arabic-Indic three
    with app_client(repository) as client:
        assert client.get("/health/ready").status_code == 200
        assert client.get("/models").json()[1]["versions"] == ["1"]
        assert client.get("/models/mnist").json()["versions"] == ["1"]
        assert client.app.state.registry.refresh() == []  # type: ignore[attr-defined]


# -- 10: every error is JSON; 405s say what is allowed ---------------------------------------------


def test_405_carries_allow(repository: Path) -> None:
    with app_client(repository) as client:
        for method, path, allowed in (("GET", "/predict/mnist", "POST"), ("DELETE", "/health/live", "GET, HEAD"),
                                      ("PUT", "/train", "GET, HEAD, POST")):  # fmt: skip
            answer = client.request(method, path, headers=AUTH)
            assert answer.status_code == 405 and answer.json()["code"] == "http_error"
            assert sorted(answer.headers["allow"].split(", ")) == sorted(allowed.split(", "))


def test_an_unexpected_failure_is_json_with_the_request_id(repository: Path, caplog: pytest.LogCaptureFixture) -> None:
    app = create_app(Settings(model_repository=repository, reload_interval_s=0))

    @app.get("/boom")
    async def boom() -> None:  # a real route with a real bug
        raise RuntimeError("a bug")

    with TestClient(app) as client:
        answer = client.get("/boom", headers={"X-Request-ID": "req-42"})
        assert answer.status_code == 500 and answer.headers["content-type"] == "application/json"
        assert answer.json() == {"error": "internal server error", "code": "internal_error", "request_id": "req-42"}
        assert answer.headers["x-request-id"] == "req-42"
        assert client.get("/health/live").headers["x-request-id"]  # every response has one
    tracebacks = [r for r in caplog.records if r.exc_info and "req-42" in r.getMessage()]
    assert len(tracebacks) == 1


# -- 14: no server paths on public routes; the folder's name is the served name; removed is gone ---


def _strings(value: object) -> Iterator[str]:
    if isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)
    elif isinstance(value, str):
        yield value


def test_public_routes_show_no_absolute_paths(repository: Path) -> None:
    original = repository / "mnist" / "1" / "model.pt"
    resave(
        original,
        repository / "mnist" / "2" / "model.pt",
        with_version(original, "2")[:-1] + b', "weights_sha256": "0"}',
    )
    with app_client(repository) as client:
        for path in ("/models", "/models/mnist", "/models/fashion", "/health/ready", "/v2/models/mnist"):
            body = client.get(path).json()
            leaked = [s for s in _strings(body) if str(repository.parent) in s or s.startswith("/")]
            assert not leaked, (path, leaked)
        assert "mnist/2/model.pt" in client.get("/models/mnist").json()["error"]


def test_served_name_is_the_folder_name_and_removed_folders_stop_serving(repository: Path) -> None:
    shutil.copytree(repository / "fashion", repository / "shoes")
    with app_client(repository) as client:
        assert client.post("/predict/shoes", **IMAGE).json()["model"] == "shoes"
        assert client.get("/v2/models/shoes").json()["name"] == "shoes"
        shutil.rmtree(repository / "shoes")
        assert client.app.state.registry.refresh() == ["shoes"]  # type: ignore[attr-defined]
        assert client.post("/predict/shoes", **IMAGE).status_code == 404
        assert client.post("/predict/fashion", **IMAGE).status_code == 200
