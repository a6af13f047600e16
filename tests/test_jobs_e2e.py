"""End to end with real processes: two API replicas, training workers, the admin script.

Replicas and workers share one model repository and one job store (SQLite or PostgreSQL).
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from app.core.repository import ModelRepository
from tests.helpers import DATA_ROOT, encode
from tests.images import draw_digit
from tests.processes import replicas, spawn, stop, wait_for

TOKEN = "e2e-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
QUICK = {"model": "mnist", "architecture": "mlp", "dataset": "mnist", "epochs": 1, "max_samples": 64}
LONG = {**QUICK, "architecture": "mnist_cnn", "epochs": 50, "max_samples": 60000}


@pytest.fixture()
def cluster_env(tmp_path: Path, tiny_repository: Path, store_url: str) -> dict[str, str]:
    repository = tmp_path / "models"
    shutil.copytree(tiny_repository, repository)
    return {
        "PIXELSERVE_MODEL_REPOSITORY": str(repository),
        "PIXELSERVE_JOB_STORE_URL": store_url,
        "PIXELSERVE_ADMIN_TOKEN": TOKEN,
        "PIXELSERVE_RELOAD_INTERVAL_S": "0.3",
        "PIXELSERVE_DATA_DIR": str(DATA_ROOT),
        "PIXELSERVE_LEASE_S": "2",
        "PIXELSERVE_POLL_INTERVAL_S": "0.2",
        "PIXELSERVE_MIN_PUBLISH_ACCURACY": "0",
        "PIXELSERVE_TORCH_THREADS": "1",
    }


@contextmanager
def workers(env: dict[str, str], count: int, logs: Path) -> Iterator[list[subprocess.Popen[bytes]]]:
    processes = [spawn(["-m", "training.worker"], {**env, "PIXELSERVE_WORKER_ID": f"w{i}"}, logs / f"worker-{i}.log")
                 for i in range(count)]  # fmt: skip
    try:
        yield processes
    finally:
        for process in processes:
            stop(process, signal.SIGKILL)


def job(url: str, job_id: int) -> dict[str, object]:
    return httpx.get(f"{url}/train/{job_id}", headers=AUTH).json()  # type: ignore[no-any-return]


def test_admin_script_job_is_hot_loaded_by_both_replicas(cluster_env: dict[str, str], tmp_path: Path) -> None:
    image = encode(draw_digit(5))
    with replicas(cluster_env, 2, tmp_path) as urls, workers(cluster_env, 1, tmp_path):
        errors: list[str] = []
        versions_seen: set[tuple[int, str]] = set()
        done = threading.Event()

        def keep_predicting() -> None:  # a client that never stops while the new version rolls out
            with httpx.Client(timeout=10) as client:
                while not done.is_set():
                    for i, url in enumerate(urls):
                        response = client.post(
                            f"{url}/predict/mnist", content=image, headers={"Content-Type": "image/png"}
                        )
                        if response.status_code != 200:
                            errors.append(f"{url}: {response.status_code} {response.text}")
                        else:
                            versions_seen.add((i, response.json()["version"]))

        client_thread = threading.Thread(target=keep_predicting)
        client_thread.start()
        try:
            command = ["-m", "app.admin", "--url", urls[0], "train", "mnist", "--architecture", "mnist_cnn"]
            command += ["--dataset", "mnist", "--epochs", "1", "--max-samples", "512", "--wait", "--poll", "0.2"]
            admin = spawn(command, {"PIXELSERVE_ADMIN_TOKEN": TOKEN})
            output, _ = admin.communicate(timeout=300)
            assert admin.returncode == 0, output.decode()
            result = json.loads(output.decode()[output.decode().index("{") :])
            assert result["status"] == "succeeded" and result["version"] == "2"
            assert 0 < result["metrics"][0]["test_accuracy"] <= 1 and b"epoch 1/1" in output

            def both_on_version_two() -> bool:
                return all(httpx.get(f"{url}/models/mnist").json()["served_version"] == "2" for url in urls)

            wait_for(both_on_version_two, timeout=10)
            wait_for(lambda: {(0, "2"), (1, "2")} <= versions_seen, timeout=10)
        finally:
            done.set()
            client_thread.join()
        assert errors == []
        assert {(0, "1"), (1, "1")} <= versions_seen  # the client was predicting before the swap too


def test_cancel_a_running_job(cluster_env: dict[str, str], tmp_path: Path) -> None:
    with replicas(cluster_env, 1, tmp_path) as (url,), workers(cluster_env, 1, tmp_path):
        job_id = httpx.post(f"{url}/train", json=LONG, headers=AUTH).json()["id"]
        wait_for(lambda: job(url, job_id)["progress"] is not None, timeout=60)
        assert httpx.post(f"{url}/train/{job_id}/cancel", headers=AUTH).json()["cancel_requested"]
        wait_for(lambda: job(url, job_id)["status"] == "cancelled", timeout=30)
        assert ModelRepository(Path(cluster_env["PIXELSERVE_MODEL_REPOSITORY"])).versions("mnist") == ["1"]


def test_killed_worker_leaves_an_interrupted_job_and_nothing_published(
    cluster_env: dict[str, str], tmp_path: Path
) -> None:
    repository = Path(cluster_env["PIXELSERVE_MODEL_REPOSITORY"])
    with replicas(cluster_env, 1, tmp_path) as (url,), workers(cluster_env, 1, tmp_path) as (worker,):
        job_id = httpx.post(f"{url}/train", json=LONG, headers=AUTH).json()["id"]
        wait_for(lambda: job(url, job_id)["progress"] is not None, timeout=60)
        worker.send_signal(signal.SIGKILL)
        worker.wait()
        wait_for(lambda: job(url, job_id)["status"] == "interrupted", timeout=15)  # the API reaps it
        assert "heartbeat" in str(job(url, job_id)["error"]) and job(url, job_id)["version"] is None
        assert ModelRepository(repository).versions("mnist") == ["1"]
        assert httpx.get(f"{url}/models/mnist").json()["served_version"] == "1"


def test_twenty_concurrent_jobs_publish_unique_increasing_versions(cluster_env: dict[str, str], tmp_path: Path) -> None:
    with replicas(cluster_env, 2, tmp_path) as urls, workers(cluster_env, 2, tmp_path):
        with ThreadPoolExecutor(20) as pool:
            responses = list(pool.map(
                lambda i: httpx.post(f"{urls[i % 2]}/train", json={**QUICK, "seed": i}, headers=AUTH, timeout=30),
                range(20),
            ))  # fmt: skip
        assert [r.status_code for r in responses] == [202] * 20
        ids = [r.json()["id"] for r in responses]
        assert len(set(ids)) == 20
        wait_for(lambda: all(job(urls[0], i)["status"] == "succeeded" for i in ids), timeout=240, interval=1)
        jobs = [job(urls[0], i) for i in ids]
        versions = sorted(int(str(j["version"])) for j in jobs)
        assert versions == list(range(2, 22))  # unique, gap-free, after the shipped version 1
        repository = ModelRepository(Path(cluster_env["PIXELSERVE_MODEL_REPOSITORY"]))
        assert repository.current_version("mnist") == "21"
        wait_for(lambda: all(httpx.get(f"{u}/models/mnist").json()["served_version"] == "21" for u in urls), 10)
