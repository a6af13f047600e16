"""Prometheus metrics, scraped from real servers and parsed with prometheus_client's own parser.

The multi-worker tests run `python -m app` with PIXELSERVE_WORKERS=2, send real traffic over fresh
connections (so both workers take some), and check that what was sent is what the merged scrape
counts, per status class; the per-worker files show each worker counted its share.
"""

from __future__ import annotations

import json
import os
import re
import signal
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from app.core.catalogue import JobStatus
from app.core.job_store import JobStore
from app.core.settings import Settings
from app.main import create_app
from tests.helpers import encode
from tests.images import draw_digit
from tests.processes import free_port, spawn, stop, wait_for, wait_ready

PNG = {"Content-Type": "image/png"}
ROUTES = {"/predict/{name}", "/models/{name}", "/v2/models/{name}/infer", "/metrics", "/health/ready", "unmatched"}


def samples(text: str, name: str) -> list[Sample]:
    return [s for family in text_string_to_metric_families(text) for s in family.samples if s.name == name]


def total(text: str, name: str, **labels: str) -> float:
    return sum(s.value for s in samples(text, name) if labels.items() <= s.labels.items())


def label_values(text: str) -> set[tuple[str, str]]:
    """Every (label, value) pair of the pixelserve_* series: what a new URL must not add to."""
    return {
        pair
        for family in text_string_to_metric_families(text)
        if family.name.startswith("pixelserve_")
        for s in family.samples
        for pair in s.labels.items()
    }


def traffic(url: str, ok: int, missing: int, unsupported: int) -> None:
    """Each request on a new connection (keep-alive would pin them all to one worker), 8 at a time."""
    image = encode(draw_digit(3))

    def one(kind: str) -> int:
        if kind == "ok":
            response = httpx.post(f"{url}/predict/mnist", content=image, headers=PNG)
        elif kind == "missing":  # a fresh random name each time: none may become a label value
            response = httpx.post(f"{url}/predict/no-such-{uuid.uuid4().hex[:8]}", content=image, headers=PNG)
        else:
            response = httpx.post(f"{url}/predict/mnist", content=b"hello", headers={"Content-Type": "text/plain"})
        return response.status_code

    kinds = ["ok"] * ok + ["missing"] * missing + ["unsupported"] * unsupported
    with ThreadPoolExecutor(8) as pool:
        codes = list(pool.map(one, kinds))
    assert codes.count(200) == ok and codes.count(404) == missing and codes.count(415) == unsupported


@contextmanager
def server(tiny_repository: Path, tmp_path: Path, **env: str) -> Iterator[str]:
    port = free_port()
    log = tmp_path / "server.log"
    variables = {
        "PIXELSERVE_MODEL_REPOSITORY": str(tiny_repository),
        "PIXELSERVE_WORKERS": "2",
        # Counting, not overload, is tested here: on a busy 2-core box the first forward passes of a
        # fresh worker are slow enough for the default queue-delay target to shed some requests.
        "PIXELSERVE_MAX_QUEUE_DELAY_MS": "30000",
        "PIXELSERVE_REQUEST_TIMEOUT_S": "60",
        **env,
    }
    process = spawn(["-m", "app", "--port", str(port)], variables, log)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, process)
        wait_for(lambda: log.read_text().count("Application startup complete.") == 2, 60)
        yield url
    finally:
        stop(process)
    assert process.returncode == 0


def test_two_workers_counts_add_up(tiny_repository: Path, tmp_path: Path) -> None:
    folder = tmp_path / "prometheus"
    folder.mkdir()
    (folder / "counter_1.db").write_bytes(b"left by an earlier run")  # python -m app empties the folder
    with server(tiny_repository, tmp_path, PROMETHEUS_MULTIPROC_DIR=str(folder)) as url:
        traffic(url, ok=40, missing=6, unsupported=5)
        text = httpx.get(f"{url}/metrics").text
        files = sorted(folder.glob("counter_*.db"))
        open_metrics = httpx.get(f"{url}/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"})

    predict = {"route": "/predict/{name}", "method": "POST"}
    assert total(text, "pixelserve_requests_total", **predict, model="mnist", version="1", status="2xx") == 40
    assert total(text, "pixelserve_requests_total", **predict, model="mnist", status="4xx") == 5  # the 415s
    assert total(text, "pixelserve_requests_total", **predict, model="unknown", version="", status="4xx") == 6
    assert total(text, "pixelserve_requests_total", **predict, status="5xx") == 0
    assert total(text, "pixelserve_request_duration_seconds_count", route="/predict/{name}") == 51
    assert total(text, "pixelserve_batch_images_sum", model="mnist") == 40  # one image per request, 415s never queued
    assert total(text, "pixelserve_queue_wait_seconds_count", model="mnist") == 40
    assert total(text, "pixelserve_forward_seconds_count", model="mnist") == total(
        text, "pixelserve_batch_images_count", model="mnist"
    )
    assert total(text, "pixelserve_queue_images") == 0 and total(text, "pixelserve_images_in_flight") == 0
    assert {s.labels["route"] for s in samples(text, "pixelserve_requests_total")} <= ROUTES
    assert {s.labels["model"] for s in samples(text, "pixelserve_requests_total")} <= {"mnist", "unknown", ""}
    assert "no-such-" not in text
    # liveall: one served-version series per live worker; process metrics per worker, labelled pid.
    served = samples(text, "pixelserve_model_served_version")
    workers = {s.labels["pid"] for s in served if s.labels["model"] == "mnist"}
    assert len(workers) == 2 and {s.value for s in served} == {1.0}
    assert workers <= {s.labels["pid"] for s in samples(text, "process_resident_memory_bytes")}

    # Each worker's own file counted some of the predictions, and together exactly what was sent.
    per_worker = [
        sum(
            s.value
            for m in MultiProcessCollector.merge([str(f)])
            for s in m.samples
            if s.name == "pixelserve_requests_total"
            and s.labels.get("status") == "2xx"
            and s.labels["model"] == "mnist"
        )
        for f in files
        if f.name.split("_")[1].removesuffix(".db") in workers
    ]
    assert len(per_worker) == 2 and all(count > 0 for count in per_worker) and sum(per_worker) == 40, per_worker

    assert open_metrics.headers["content-type"].startswith("application/openmetrics-text")
    assert open_metrics.text.endswith("# EOF\n")
    assert total(open_metrics.text, "pixelserve_requests_total", **predict, model="mnist", status="2xx") == 40


def test_metrics_port_is_served_by_the_supervisor_and_survives_a_killed_worker(
    tiny_repository: Path, tmp_path: Path
) -> None:
    metrics_port = free_port()
    metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
    with server(tiny_repository, tmp_path, PIXELSERVE_METRICS_PORT=str(metrics_port)) as url:
        assert httpx.get(f"{url}/metrics").status_code == 404  # not on the main port: not behind the balancer
        traffic(url, ok=12, missing=2, unsupported=0)
        before = httpx.get(metrics_url).text
        assert total(before, "pixelserve_requests_total", route="/predict/{name}", status="2xx") == 12
        old = {int(s.labels["pid"]) for s in samples(before, "pixelserve_model_served_version")}
        assert len(old) == 2

        victim = min(old)
        os.kill(victim, signal.SIGKILL)  # an OOM kill: no lifespan shutdown, its files stay behind

        def replaced() -> bool:
            now = {
                int(s.labels["pid"]) for s in samples(httpx.get(metrics_url).text, "pixelserve_model_served_version")
            }
            return len(now) == 2 and victim not in now

        wait_for(replaced, 60)  # uvicorn's supervisor started a new worker; the dead one's live gauges went
        traffic(url, ok=5, missing=0, unsupported=0)
        after = httpx.get(metrics_url).text
    # The killed worker's counts stay in the totals: counters never go back.
    assert total(after, "pixelserve_requests_total", route="/predict/{name}", status="2xx") == 17
    assert total(after, "pixelserve_requests_total", route="/predict/{name}", model="unknown") == 2
    assert total(after, "pixelserve_images_in_flight") == 0


def test_a_404_for_a_random_model_adds_no_label_value(tiny_repository: Path) -> None:
    with TestClient(create_app(Settings(model_repository=tiny_repository))) as client:
        image = encode(draw_digit(7))
        assert client.post("/predict/mnist", content=image, headers=PNG).status_code == 200
        assert client.post("/predict/first-unknown", content=image, headers=PNG).status_code == 404
        assert client.get("/models/first-unknown").status_code == 404
        assert client.get("/v2/models/first-unknown").status_code == 404
        assert client.get("/no/such/path/first-unknown").status_code == 404
        client.get("/metrics")  # the scrape counts itself from the next one on
        first = client.get("/metrics").text
        for _ in range(5):
            name = f"random-{uuid.uuid4().hex}"
            assert client.post(f"/predict/{name}", content=image, headers=PNG).status_code == 404
            assert client.get(f"/v2/models/{name}").status_code == 404
            assert client.get(f"/no/such/path/{name}").status_code == 404
        second = client.get("/metrics").text
    assert label_values(second) == label_values(first)
    assert "random-" not in second and "first-unknown" not in second
    before = total(first, "pixelserve_requests_total", route="/predict/{name}", model="unknown")
    assert total(second, "pixelserve_requests_total", route="/predict/{name}", model="unknown") == before + 5


@pytest.fixture()
def store_with_jobs(tmp_path: Path) -> tuple[str, int]:
    url = f"sqlite:///{tmp_path / 'jobs.sqlite'}"
    store = JobStore(url)
    for _ in range(3):
        store.create("mnist", {"epochs": 4})
    job = store.claim("worker-1", 60)
    assert job is not None
    store.heartbeat(job["id"], "worker-1", 60, {"epoch": 2, "epochs": 4, "step": 7, "steps": 30})
    store.add_epoch(job["id"], "worker-1", {"epoch": 1, "train_loss": 0.5, "test_accuracy": 0.91, "seconds": 1.0})
    store.engine.dispose()
    return url, job["id"]


def test_training_jobs_are_read_from_the_store_at_scrape_time(
    tiny_repository: Path, store_with_jobs: tuple[str, int]
) -> None:
    url, job_id = store_with_jobs
    settings = Settings(model_repository=tiny_repository, admin_token="t" * 32, job_store_url=url)
    with TestClient(create_app(settings)) as client:
        text = client.get("/metrics").text
        store = JobStore(url)
        store.create("fashion", {"epochs": 1})  # another replica's job: the next scrape sees the store as it is
        store.engine.dispose()
        later = client.get("/metrics").text
    assert total(text, "pixelserve_job_store_up") == 1
    assert total(text, "pixelserve_training_jobs", status=JobStatus.QUEUED) == 2
    assert total(text, "pixelserve_training_jobs", status=JobStatus.RUNNING) == 1
    assert total(text, "pixelserve_training_jobs", status=JobStatus.FAILED) == 0
    running = {"job": str(job_id), "model": "mnist"}
    assert total(text, "pixelserve_training_job_epoch", **running) == 2
    assert total(text, "pixelserve_training_job_step", **running) == 7
    assert total(text, "pixelserve_training_job_test_accuracy", **running) == pytest.approx(0.91)
    assert total(later, "pixelserve_training_jobs", status=JobStatus.QUEUED) == 3


def test_no_job_metrics_without_a_job_store(client: TestClient) -> None:
    text = client.get("/metrics").text
    assert samples(text, "pixelserve_training_jobs") == [] and samples(text, "pixelserve_job_store_up") == []


def test_the_dashboard_and_readme_queries_name_only_exported_metrics(tiny_repository: Path, tmp_path: Path) -> None:
    """deploy/grafana/pixelserve.json and the README's PromQL use names a scrape really has."""
    settings = Settings(
        model_repository=tiny_repository, admin_token="t" * 32, job_store_url=f"sqlite:///{tmp_path / 'jobs.sqlite'}"
    )
    with TestClient(create_app(settings)) as client:
        assert client.post("/predict/mnist", content=encode(draw_digit(1)), headers=PNG).status_code == 200
        families = list(text_string_to_metric_families(client.get("/metrics").text))
    # Sample names, and the series names of families with no sample yet (a counter no one has shed).
    exported = {s.name for family in families for s in family.samples}
    exported |= {family.name + ("_total" if family.type == "counter" else "") for family in families}
    root = Path(__file__).resolve().parent.parent
    dashboard = json.loads((root / "deploy" / "grafana" / "pixelserve.json").read_text())
    expressions = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    promql = (root / "README.md").read_text().split("## Metrics", 1)[1].split("```promql", 1)[1].split("```", 1)[0]
    used = {name for text in [*expressions, promql] for name in re.findall(r"\b(?:pixelserve|process)_[a-z_]+", text)}
    assert {"pixelserve_queue_images", "pixelserve_request_duration_seconds_bucket"} <= used
    assert used - exported == set()
