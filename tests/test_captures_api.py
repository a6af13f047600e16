"""Captures through a real uvicorn process: what /predict hands off appears under /captures, the
admin routes (filters, image, label, delete, export) and their guard, and a full hand-off that
drops while every request still answers 200."""

from __future__ import annotations

import base64
import io
import json
import shutil
import sqlite3
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from PIL import Image

from app import admin
from app.core.captures_export import IMAGES_FILE, LABELS_FILE
from app.core.catalogue import FASHION_LABELS
from tests.helpers import dataset_dir, encode
from tests.processes import ROOT, replicas, wait_for
from training.data import LoadedDataset, parse_idx

TOKEN = "capture-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
POLICIES = {
    "mnist": {"rate": 0.0, "below_confidence": 0.8},
    "fashion": {"rate": 0.5, "keep_originals": True, "max_count": 1000},
}


def _env(repository: Path, store_url: str, **extra: str) -> dict[str, str]:
    return {
        "PIXELSERVE_MODEL_REPOSITORY": str(repository),
        "PIXELSERVE_JOB_STORE_URL": store_url,
        "PIXELSERVE_ADMIN_TOKEN": TOKEN,
        "PIXELSERVE_RELOAD_INTERVAL_S": "0",
        "PIXELSERVE_TORCH_THREADS": "1",
        **extra,
    }


@pytest.fixture()
def server(repository: Path, store_url: str, tmp_path: Path) -> Iterator[str]:
    env = _env(repository, store_url, PIXELSERVE_CAPTURE=json.dumps(POLICIES))
    with replicas(env, 1, tmp_path) as urls:
        yield urls[0]


def _captures(url: str, **params: str | float) -> list[dict[str, object]]:
    response = httpx.get(f"{url}/captures", params={"limit": 1000, **params}, headers=AUTH)
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


def _predict(url: str, model: str, png: bytes, request_id: str) -> dict[str, object]:
    response = httpx.post(
        f"{url}/predict/{model}",
        params={"include_input": "true"},
        content=png,
        headers={"Content-Type": "image/png", "X-Request-ID": request_id},
    )
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


def test_captures_end_to_end(
    server: str,
    repository: Path,
    mnist: LoadedDataset,
    fashion: LoadedDataset,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    url = server
    noise = np.random.default_rng(0)
    uploads = [encode(mnist.test.images[i].numpy()) for i in range(24)]
    uploads += [encode(noise.integers(0, 256, (28, 28), dtype=np.uint8)) for _ in range(8)]
    answers = {f"m-{i}": _predict(url, "mnist", png, f"m-{i}") for i, png in enumerate(uploads)}
    unsure = {rid for rid, answer in answers.items() if float(answer["confidence"]) < 0.8}  # type: ignore[arg-type]
    assert 0 < len(unsure) < len(answers), [a["confidence"] for a in answers.values()]  # both sides
    wait_for(lambda: len(_captures(url, model="mnist")) == len(unsure), timeout=20)
    captured = {str(c["request_id"]): c for c in _captures(url, model="mnist")}
    assert set(captured) == unsure  # every low-confidence answer, nothing else (rate 0)
    for rid, capture in captured.items():
        assert capture["prediction"] == answers[rid]["label"] and capture["confidence"] == answers[rid]["confidence"]
        assert capture["has_original"] is False and capture["label"] is None
        image = httpx.get(f"{url}/captures/{capture['id']}/image", headers=AUTH)
        assert image.headers["content-type"] == "image/png"
        assert image.content == base64.b64decode(str(answers[rid]["input_png"]))  # exactly what the model saw
        assert Image.open(io.BytesIO(image.content)).size == (28, 28)
    assert not list((repository / ".captures" / "mnist").glob("*.upload"))  # originals are never kept unasked

    sent = [encode(fashion.test.images[i].numpy()) for i in range(60)]
    for i, png in enumerate(sent):
        _predict(url, "fashion", png, f"f-{i}")
    fashion_captures = _settled(url, "fashion")
    assert 10 <= len(fashion_captures) <= 50  # rate 0.5 of 60 (mean 30, sd 3.9)
    originals = [path.read_bytes() for path in (repository / ".captures" / "fashion").glob("*.upload")]
    assert len(originals) == len(fashion_captures)  # keep_originals: the upload as sent, one per capture
    for capture in fashion_captures:
        assert capture["has_original"] is True
        assert sent[int(str(capture["request_id"]).split("-")[1])] in originals

    detail = httpx.get(f"{url}/models/mnist").json()
    assert detail["capture"]["below_confidence"] == 0.8 and detail["capture"]["keep_originals"] is False

    # Labels: validated against the model's own labels.
    first, second = sorted(captured.values(), key=lambda c: int(c["id"]))[:2]  # type: ignore[call-overload]
    put = httpx.put(f"{url}/captures/{first['id']}/label", json={"label": "7"}, headers=AUTH)
    assert put.status_code == 200 and put.json()["label"] == "7"
    assert httpx.put(f"{url}/captures/{second['id']}/label", json={"label": "3"}, headers=AUTH).status_code == 200
    for bad in ({"label": "cat"}, {"label": "Bag"}, {"label": ""}, {"label": 7}, {"label": "7", "x": 1}):
        response = httpx.put(f"{url}/captures/{first['id']}/label", json=bad, headers=AUTH)
        assert response.status_code == 422, (bad, response.text)
    assert httpx.put(f"{url}/captures/{first['id']}/label", json={"label": "cat"}, headers=AUTH).json()["code"] == (
        "invalid_label"
    )
    bag = httpx.put(f"{url}/captures/{fashion_captures[0]['id']}/label", json={"label": "Bag"}, headers=AUTH)
    assert bag.status_code == 200 and FASHION_LABELS.index("Bag") == 8

    # Filters.
    assert {c["id"] for c in _captures(url, labelled="true")} == {first["id"], second["id"], fashion_captures[0]["id"]}
    assert [c["id"] for c in _captures(url, model="mnist", label="7")] == [first["id"]]
    assert len(_captures(url, model="mnist", labelled="false")) == len(unsure) - 2
    assert _captures(url, model="mnist", version="999") == []
    low = _captures(url, model="mnist", max_confidence=0.5)
    assert all(float(c["confidence"]) <= 0.5 for c in low)  # type: ignore[arg-type]
    assert len(low) + len(_captures(url, model="mnist", min_confidence=0.5000001)) == len(unsure)

    # Export: IDX files that training/data.py reads back, labels as the model's indices.
    exported = httpx.get(f"{url}/captures/export", params={"model": "mnist"}, headers=AUTH)
    assert exported.status_code == 200 and exported.headers["content-type"] == "application/x-tar"
    with tarfile.open(fileobj=io.BytesIO(exported.content)) as archive:
        files = {Path(m.name).name: archive.extractfile(m).read() for m in archive.getmembers()}  # type: ignore[union-attr]
    assert parse_idx(files[LABELS_FILE]).tolist() == [7, 3]  # oldest first
    images = parse_idx(files[IMAGES_FILE])
    first_png = Image.open(io.BytesIO(httpx.get(f"{url}/captures/{first['id']}/image", headers=AUTH).content))
    assert images.shape == (2, 28, 28) and torch.equal(images[0], torch.from_numpy(np.array(first_png)))
    assert httpx.get(f"{url}/captures/export", params={"model": "nosuch"}, headers=AUTH).status_code == 404

    # The admin script: the same routes over HTTP.
    monkeypatch.setenv("PIXELSERVE_ADMIN_TOKEN", TOKEN)
    capsys.readouterr()
    assert admin.run(["--url", url, "label", str(second["id"]), "4"]) == 0
    assert json.loads(capsys.readouterr().out)["label"] == "4"
    assert admin.run(["--url", url, "captures", "--model", "mnist", "--labelled"]) == 0
    assert [c["id"] for c in json.loads(capsys.readouterr().out)] == [second["id"], first["id"]]
    assert admin.run(["--url", url, "capture-export", "mnist", "-o", str(tmp_path / "mnist.tar")]) == 0
    with tarfile.open(tmp_path / "mnist.tar") as archive:
        member = next(m for m in archive.getmembers() if m.name.endswith(LABELS_FILE))
        assert parse_idx(archive.extractfile(member).read()).tolist() == [7, 4]  # type: ignore[union-attr]
    with pytest.raises(admin.AdminError, match="HTTP 422"):
        admin.run(["--url", url, "label", str(second["id"]), "cat"])
    capsys.readouterr()

    # Delete: the row and its file.
    files_before = len(list((repository / ".captures" / "mnist").glob("*.png")))
    assert httpx.delete(f"{url}/captures/{first['id']}", headers=AUTH).status_code == 204
    assert httpx.get(f"{url}/captures/{first['id']}", headers=AUTH).status_code == 404
    assert httpx.delete(f"{url}/captures/{first['id']}", headers=AUTH).status_code == 404
    assert len(list((repository / ".captures" / "mnist").glob("*.png"))) == files_before - 1
    assert httpx.get(f"{url}/captures/{2**70}", headers=AUTH).status_code == 404

    # Admin only.
    for method, path in (
        ("GET", "/captures"),
        ("GET", f"/captures/{second['id']}"),
        ("GET", f"/captures/{second['id']}/image"),
        ("PUT", f"/captures/{second['id']}/label"),
        ("DELETE", f"/captures/{second['id']}"),
        ("GET", "/captures/export?model=mnist"),
    ):
        assert httpx.request(method, f"{url}{path}", json={"label": "1"}).status_code == 401
        wrong = {"Authorization": "Bearer nope"}
        assert httpx.request(method, f"{url}{path}", json={"label": "1"}, headers=wrong).status_code == 403
    assert httpx.get(f"{url}/captures/{second['id']}", headers=AUTH).json()["label"] == "4"  # nothing changed


def test_a_full_hand_off_never_fails_a_request(repository: Path, tmp_path: Path, mnist: LoadedDataset) -> None:
    """The writer is stuck behind a held SQLite lock; with a queue of 2, requests go on answering 200."""
    db = tmp_path / "jobs.sqlite"
    env = _env(
        repository,
        f"sqlite:///{db}",
        PIXELSERVE_CAPTURE=json.dumps({"mnist": {"rate": 1.0}}),
        PIXELSERVE_CAPTURE_QUEUE="2",
        PIXELSERVE_MAX_QUEUE_DELAY_MS="10000",  # a burst on a busy machine is not overload here (test_overload's)
    )
    uploads = [encode(mnist.test.images[i].numpy()) for i in range(40)]
    with replicas(env, 1, tmp_path) as urls:
        url = urls[0]
        blocker = sqlite3.connect(db, isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")
        try:
            with ThreadPoolExecutor(4) as pool:
                statuses = list(pool.map(lambda i: _predict(url, "mnist", uploads[i], f"x-{i}") and 200, range(40)))
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
        assert statuses == [200] * 40
        metrics = httpx.get(f"{url}/metrics").text
        dropped = _sample(metrics, 'pixelserve_captures_total{model="mnist",outcome="dropped"}')
        assert dropped >= 30  # at most the writer's first batch and the 2 queued got through
        wait_for(lambda: len(_captures(url, model="mnist")) == 40 - dropped, timeout=20)


def _settled(url: str, model: str) -> list[dict[str, object]]:
    """The model's captures once the writer has stopped adding any (it writes in batches)."""
    seen: list[list[dict[str, object]]] = [[]]

    def unchanged() -> bool:
        now = _captures(url, model=model)
        same = bool(now) and len(now) == len(seen[-1])
        seen.append(now)
        return same

    wait_for(unchanged, timeout=20, interval=0.5)
    return seen[-1]


def _sample(text: str, series: str) -> float:
    for line in text.splitlines():
        if line.startswith(series + " "):
            return float(line.split()[-1])
    raise AssertionError(f"{series} not in the scrape")


def test_capture_benchmark_quick(tmp_path: Path) -> None:
    """benchmarks/captures.py end to end, in seconds: its table names all three variants."""
    if shutil.which("wrk") is None:
        pytest.skip("wrk is not installed")
    argv = [sys.executable, "-m", "benchmarks.captures", "--rounds", "1", "--seconds", "1", "--connections", "2"]
    argv += ["--data-dir", str(dataset_dir("mnist")), "--output", str(tmp_path)]
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    table = (tmp_path / "captures-latest.md").read_text()
    assert all(f"| {name} |" in table for name in ("off", "rate 0.01", "rate 1.0")) and '"stored"' in table
