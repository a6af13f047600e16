"""Canary and shadow rollouts against real uvicorn replicas sharing a repository and a job store."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.core.repository import ModelRepository
from app.core.rollout import key_share
from tests.helpers import encode
from tests.images import draw_digit
from tests.processes import replicas, wait_for
from tests.test_hot_reload import save_with_metadata

TOKEN = "rollout-token"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}
IMAGE = encode(draw_digit(3))
PNG = {"Content-Type": "image/png"}
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit")  # the fixture re-saves TorchScript files


@pytest.fixture()
def versions(repository: Path) -> Path:
    """mnist versions 1 (current, by CURRENT), 2 and 3: the same weights under new version numbers."""
    for version in ("2", "3"):
        shutil.copytree(repository / "mnist" / "1", repository / "mnist" / version)
        source = repository / "mnist" / "1" / "model.pt"
        save_with_metadata(source, repository / "mnist" / version / "model.pt", version=version)
    ModelRepository(repository).write_pointer("mnist", "1", pinned=False)
    return repository


@pytest.fixture()
def fleet(versions: Path, tmp_path: Path) -> Iterator[list[str]]:
    env = {
        "PIXELSERVE_MODEL_REPOSITORY": str(versions),
        "PIXELSERVE_MODELS": "mnist",
        "PIXELSERVE_ADMIN_TOKEN": TOKEN,
        "PIXELSERVE_JOB_STORE_URL": f"sqlite:///{tmp_path / 'jobs.sqlite'}",
        "PIXELSERVE_RELOAD_INTERVAL_S": "0.2",
    }
    with replicas(env, 2, tmp_path) as urls:
        yield urls


def admin(url: str, *command: str) -> Any:
    done = subprocess.run(
        [sys.executable, "-m", "app.admin", "--url", url, *command],
        env={**os.environ, "PIXELSERVE_ADMIN_TOKEN": TOKEN},
        capture_output=True,
        check=True,
        timeout=60,
    )
    return json.loads(done.stdout)


def predict(client: httpx.Client, url: str, key: str | None = None) -> str:
    headers = {**PNG, **({"X-Pixelserve-Route-Key": key} if key else {})}
    response = client.post(f"{url}/predict/mnist", content=IMAGE, headers=headers)
    assert response.status_code == 200, response.text
    return str(response.json()["version"])


def test_canary_share_is_binomial_and_keys_stick_and_every_replica_follows(fleet: list[str]) -> None:
    first, second = fleet
    with httpx.Client(timeout=30) as client:
        set_ = client.put(f"{first}/models/mnist/rollout", json={"candidate": "2", "weight": 0.2}, headers=ADMIN)
        assert set_.status_code == 200, set_.text
        assert set_.json()["applied"] == {"candidate_loaded": True, "shadow_loaded": False, "error": None}
        # The other replica applies it at its next poll, with no restart.
        wait_for(lambda: any(predict(client, second) == "2" for _ in range(50)), timeout=10)

        requests, share = 2000, 0.2
        counts = Counter(predict(client, fleet[i % 2]) for i in range(requests))
        sigma = math.sqrt(requests * share * (1 - share))
        assert abs(counts["2"] - requests * share) <= 3 * sigma, counts
        assert set(counts) == {"1", "2"}

        # A routing key always gets the same version, on either replica; keys spread over both.
        by_key = {key: {predict(client, fleet[i % 2], key) for i in range(6)} for key in map(str, range(60))}
        assert all(len(seen) == 1 for seen in by_key.values()), by_key
        assert {version for seen in by_key.values() for version in seen} == {"1", "2"}

        # The OIP route honours the policy and the key alike.
        candidate_key = next(key for key in map(str, range(1000)) if key_share("mnist", key) < 0.2)
        tensor = {"name": "image", "datatype": "UINT8", "shape": [1, 28, 28], "data": [0] * 784}
        for url in fleet:
            v2 = client.post(
                f"{url}/v2/models/mnist/infer",
                json={"inputs": [tensor]},
                headers={"X-Pixelserve-Route-Key": candidate_key},
            )
            assert v2.status_code == 200 and v2.json()["model_version"] == "2", v2.text

        detail = client.get(f"{second}/models/mnist").json()
        assert detail["served_version"] == "1"
        assert detail["rollout"]["candidate"] == "2"
        assert detail["rollout"]["weight"] == 0.2

        # Abort: both replicas go back to the served version alone.
        assert client.delete(f"{first}/models/mnist/rollout", headers=ADMIN).status_code == 200
        wait_for(lambda: all(predict(client, second) == "1" for _ in range(30)), timeout=10)
        assert client.get(f"{second}/models/mnist").json()["rollout"] is None


def test_shadow_runs_after_the_answer_is_compared_and_promotes_automatically(fleet: list[str]) -> None:
    first, second = fleet
    policy = {"shadow": "3", "shadow_rate": 1.0, "auto": {"min_requests": 40, "min_agreement": 0.99}}
    with httpx.Client(timeout=30) as client:
        assert client.put(f"{first}/models/mnist/rollout", json=policy, headers=ADMIN).status_code == 200
        wait_for(lambda: client.get(f"{second}/models/mnist").json()["rollout"] is not None, timeout=10)
        # Clients only ever see the served version; the shadow's answers are kept, not sent.
        assert {predict(client, url) for url in fleet for _ in range(15)} == {"1"}
        wait_for(
            lambda: (
                client.get(f"{first}/models/mnist/rollout", headers=ADMIN).json()["replica_counts"]["shadowed"] >= 15
            ),
            timeout=10,
        )
        counts = client.get(f"{first}/models/mnist/rollout", headers=ADMIN).json()["replica_counts"]
        assert counts["agreement"] == 1.0  # the same weights
        assert counts["by_role"]["shadow"]["answers"] >= 15
        metrics = client.get(f"{first}/metrics").text
        assert 'pixelserve_shadow_comparisons_total{answered="1",model="mnist",outcome="agree",shadow="3"}' in metrics

        # The rule counts the fleet's shadowed requests (up to 30 so far over two replicas; a shadow run can be
        # shed on a busy machine): at 40, it promotes, and every replica follows.
        def promoted() -> bool:
            for _ in range(5):
                predict(client, first)
            return str(client.get(f"{second}/models/mnist").json()["served_version"]) == "3"

        wait_for(promoted, timeout=30)
        wait_for(lambda: client.get(f"{first}/models/mnist").json()["served_version"] == "3", timeout=10)
        view = client.get(f"{first}/models/mnist/rollout", headers=ADMIN).json()
        assert view["rollout"] is None
        assert [event["action"] for event in view["history"]] == ["rollout", "promoted"]
        assert view["history"][-1]["by"] == "auto"
        assert view["history"][-1]["detail"]["version"] == "3"


def test_promote_and_the_refusals(fleet: list[str], versions: Path) -> None:
    url = fleet[0]
    with httpx.Client(base_url=url, timeout=30) as client:
        assert client.get("/models/mnist/rollout").status_code == 401
        assert client.put("/models/mnist/rollout", json={"shadow": "2"}).status_code == 401
        for body, status in (
            ({"candidate": "9", "weight": 0.5}, 404),  # no such version
            ({"candidate": "1", "weight": 0.5}, 409),  # the served version already
            ({"candidate": "..", "weight": 0.5}, 422),
            ({"weight": 0.5}, 422),  # a weight without a candidate
            ({"candidate": "2"}, 422),  # a candidate without a weight
            ({"candidate": "2", "weight": 1.5}, 422),
            ({"candidate": "2", "weight": "0.5"}, 422),
            ({}, 422),
            ({"shadow": "2", "extra": 1}, 422),
        ):
            response = client.put("/models/mnist/rollout", json=body, headers=ADMIN)
            assert response.status_code == status, (body, response.text)
            assert "error" in response.json()
        assert client.put("/models/nope/rollout", json={"shadow": "2"}, headers=ADMIN).status_code == 404
        assert client.delete("/models/mnist/rollout", headers=ADMIN).status_code == 409
        assert client.post("/models/mnist/rollout/promote", headers=ADMIN).status_code == 409

        (versions / "mnist" / "3" / "model.pt").write_bytes(b"broken")
        broken = client.put("/models/mnist/rollout", json={"shadow": "3"}, headers=ADMIN)
        assert broken.status_code == 409 and "cannot be served" in broken.json()["error"]

        # The admin script: set a canary, read it back, promote.
        set_ = admin(url, "rollout", "mnist", "--candidate", "2", "--weight", "0.5")
        assert set_["rollout"]["candidate"] == "2" and set_["applied"]["candidate_loaded"]
        assert admin(url, "rollout", "mnist")["rollout"]["weight"] == 0.5
        assert admin(url, "promote", "mnist") == {"model": "mnist", "version": "2", "pinned": False}
        assert ModelRepository(versions).read_pointer("mnist") == ("2", False)
        assert ModelRepository(versions).read_rollout("mnist") is None
        assert client.get("/models/mnist").json()["served_version"] == "2"
        wait_for(lambda: httpx.get(f"{fleet[1]}/models/mnist").json()["served_version"] == "2", timeout=10)
