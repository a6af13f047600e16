"""The whole loop with real processes: capture uploads, label them, train on them, publish as a canary, promote."""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Any

import httpx

from tests.helpers import DATA_ROOT, encode
from tests.images import draw_digit
from tests.processes import replicas, spawn, stop, wait_for

TOKEN = "loop-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
DIGITS = [(digit, tilt) for digit in range(10) for tilt in (-8.0, 0.0, 8.0)]  # 30 uploads, three of each digit


def test_capture_label_train_canary_promote(repository: Path, tmp_path: Path) -> None:
    env = {
        "PIXELSERVE_MODEL_REPOSITORY": str(repository),
        "PIXELSERVE_MODELS": "mnist",
        "PIXELSERVE_JOB_STORE_URL": f"sqlite:///{tmp_path / 'jobs.sqlite'}",
        "PIXELSERVE_ADMIN_TOKEN": TOKEN,
        "PIXELSERVE_RELOAD_INTERVAL_S": "0.3",
        "PIXELSERVE_CAPTURE": json.dumps({"mnist": {"rate": 1.0}}),
        "PIXELSERVE_DATA_DIR": str(DATA_ROOT),
        "PIXELSERVE_POLL_INTERVAL_S": "0.2",
        "PIXELSERVE_MIN_PUBLISH_ACCURACY": "0",
        "PIXELSERVE_TORCH_THREADS": "1",
    }
    worker = spawn(["-m", "training.worker"], {**env, "PIXELSERVE_WORKER_ID": "loop"}, tmp_path / "worker.log")
    try:
        with replicas(env, 1, tmp_path) as (url,), httpx.Client(base_url=url, timeout=30, headers=AUTH) as client:
            # 1. Users upload digits; every one is captured (rate 1.0), as the model saw it.
            for digit, tilt in DIGITS:
                png = encode(draw_digit(digit, rotate=tilt))
                assert client.post("/predict/mnist", content=png, headers={"Content-Type": "image/png"}).is_success
            wait_for(lambda: len(client.get("/captures", params={"model": "mnist"}).json()) == len(DIGITS), 15)
            assert client.get("/models/mnist").json()["capture"]["rate"] == 1.0

            # 2. An admin labels them with what was drawn (oldest first: the upload order).
            captures = sorted(client.get("/captures", params={"model": "mnist"}).json(), key=lambda c: c["id"])
            for capture, (digit, _) in zip(captures, DIGITS, strict=True):
                assert client.put(f"/captures/{capture['id']}/label", json={"label": str(digit)}).is_success
            assert len(client.get("/captures", params={"model": "mnist", "labelled": True}).json()) == len(DIGITS)
            # An OIP request is captured too (unlabelled: it does not join the training set).
            tensor = {"name": "image", "datatype": "UINT8", "shape": [1, 28, 28], "data": [0] * 784}
            assert client.post("/v2/models/mnist/infer", json={"inputs": [tensor]}).is_success
            wait_for(lambda: len(client.get("/captures", params={"labelled": False}).json()) == 1, 15)

            # 3. A job trains on the official set plus the captures and publishes as a canary.
            body: dict[str, Any] = {
                "model": "mnist",
                "architecture": "mlp",
                "dataset": "mnist",
                "epochs": 1,
                "max_samples": 256,
                "augment": False,
                "include_captures": True,
                "captures_weight": 4,
                "captures_held_out": 0.3,
                "rollout": {"canary": 0.5},
            }
            job = client.post("/train", json=body).json()
            try:
                wait_for(lambda: client.get(f"/train/{job['id']}").json()["status"] == "succeeded", 180, interval=0.5)
            except TimeoutError:
                raise AssertionError((tmp_path / "worker.log").read_text()[-3000:]) from None
            version = client.get(f"/train/{job['id']}").json()["version"]
            assert version == "2"

            # The new version is the candidate, not the served version; its metadata scores the held-out captures.
            rollout = client.get("/models/mnist/rollout").json()
            assert rollout["served_version"] == "1"
            assert rollout["rollout"]["candidate"] == "2" and rollout["rollout"]["weight"] == 0.5
            assert rollout["rollout"]["by"] == f"job:{job['id']}"
            assert [event["action"] for event in rollout["history"]] == ["published"]
            metadata = client.get("/models/mnist/versions/2").json()["metadata"]
            held_out = metadata["captures"]["held_out"]
            assert 0 < held_out < len(DIGITS) and metadata["captures"]["trained"] == len(DIGITS) - held_out
            assert 0 <= metadata["capture_accuracy"] <= 1 and "test_accuracy" in metadata

            # 4. Real traffic reaches both versions, then the admin promotes the candidate.
            seen: set[str] = set()
            png = encode(draw_digit(7))

            def both_answer() -> bool:
                answer = client.post("/predict/mnist", content=png, headers={"Content-Type": "image/png"})
                seen.add(answer.json()["version"])
                return seen == {"1", "2"}

            wait_for(both_answer, 15, interval=0.01)
            assert client.post("/models/mnist/rollout/promote").json()["version"] == "2"
            assert client.get("/models/mnist").json()["served_version"] == "2"
            assert client.get("/models/mnist").json()["rollout"] is None
    finally:
        stop(worker, signal.SIGKILL)
