"""Request logs: one structured access line per request, the request id on every line, the job id on a job's.

Against a real uvicorn process (its log file read back) and a real training worker.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.core import logs
from tests.helpers import encode
from tests.images import draw_digit
from tests.processes import replicas, spawn, stop

IMAGE = encode(draw_digit(4))


def json_lines(log: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]


@pytest.fixture(scope="module")
def server(tiny_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    folder = tmp_path_factory.mktemp("logs")
    env = {"PIXELSERVE_MODEL_REPOSITORY": str(tiny_repository), "PIXELSERVE_LOG_FORMAT": "json"}
    with replicas(env, 1, folder) as (url,):
        yield url, folder / "replica-0.log"


def access_lines(log: Path, request_id: str) -> list[dict[str, Any]]:
    time.sleep(0.3)  # the line is written after the response is sent
    return [
        line
        for line in json_lines(log)
        if line["logger"] == "pixelserve.access" and line.get("request_id") == request_id
    ]


def test_one_access_line_per_request_with_its_fields(server: tuple[str, Path]) -> None:
    url, log = server
    answer = httpx.post(
        f"{url}/predict/mnist", content=IMAGE, headers={"Content-Type": "image/png", "X-Request-ID": "req-a1"}
    )
    assert answer.status_code == 200 and answer.headers["x-request-id"] == "req-a1"
    (line,) = access_lines(log, "req-a1")
    assert line["route"] == "/predict/{name}" and line["method"] == "POST" and line["status"] == 200
    assert line["model"] == "mnist" and line["version"] == answer.json()["version"] and line["images"] == 1
    assert line["latency_ms"] > 0 and line["client"].startswith("127.0.0.1:")
    # uvicorn's own access line is off: no second line for the same request
    plain = [text for text in log.read_text().splitlines() if not text.startswith("{")]
    assert not [text for text in plain if '"POST /predict/mnist HTTP/1.1"' in text]


def test_unknown_model_logs_the_route_template_not_a_model(server: tuple[str, Path]) -> None:
    url, log = server
    answer = httpx.post(f"{url}/predict/{'x' * 40}", content=IMAGE, headers={"X-Request-ID": "req-b2"})
    assert answer.status_code == 404
    (line,) = access_lines(log, "req-b2")
    assert line["route"] == "/predict/{name}" and line["status"] == 404 and "model" not in line


def test_every_line_of_a_request_carries_its_id(server: tuple[str, Path]) -> None:
    url, log = server
    httpx.post(f"{url}/predict/mnist", content=b"\x89PNG\r\n\x1a\n" + b"0" * 64, headers={"X-Request-ID": "req-c3"})
    assert access_lines(log, "req-c3")  # waits for the access line, written after the answer
    lines = [line for line in json_lines(log) if line.get("request_id") == "req-c3"]
    assert lines and all(line["request_id"] == "req-c3" for line in lines)


def test_text_format_names_the_ids(caplog: pytest.LogCaptureFixture) -> None:
    record = logging.LogRecord("pixelserve.worker", logging.INFO, __file__, 1, "epoch %d", (3,), None)
    record.job_id, record.request_id = 12, None
    text = logs.TextFormatter().format(record)
    assert text.endswith("epoch 3 job_id=12")
    record.route = "/predict/{name}"
    entry = json.loads(logs.JsonFormatter().format(record))
    assert entry["job_id"] == 12 and entry["route"] == "/predict/{name}" and entry["message"] == "epoch 3"


def test_worker_lines_carry_the_job_id(tiny_repository: Path, tmp_path: Path) -> None:
    """A real worker trains a tiny job: every line it logs while the job runs names the job."""
    from app.core.job_store import JobStore

    store_url = f"sqlite:///{tmp_path / 'jobs.sqlite'}"
    request = {"architecture": "mlp", "dataset": "mnist", "epochs": 1, "max_samples": 256, "batch_size": 64}
    job, _ = JobStore(store_url).create("digits", request)
    log = tmp_path / "worker.log"
    env = {
        "PIXELSERVE_MODEL_REPOSITORY": str(tmp_path / "models"),
        "PIXELSERVE_JOB_STORE_URL": store_url,
        "PIXELSERVE_LOG_FORMAT": "json",
        "PIXELSERVE_MIN_PUBLISH_ACCURACY": "0",
        "PIXELSERVE_POLL_INTERVAL_S": "0.2",
    }
    worker = spawn(["-m", "training.worker"], env, log)
    try:
        deadline = time.monotonic() + 120
        while JobStore(store_url).get(job["id"])["status"] in ("queued", "running") and time.monotonic() < deadline:  # type: ignore[index]
            time.sleep(0.5)
    finally:
        stop(worker)
    lines = json_lines(log)
    during = [line for line in lines if "epoch 1/1" in line["message"] or "published" in line["message"]]
    assert during, [line["message"] for line in lines]
    assert all(line.get("job_id") == job["id"] for line in during)
