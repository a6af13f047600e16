"""Captures below HTTP: the store on SQLite and PostgreSQL (filters, labels, retention), the
dropping hand-off against a real locked database, the IDX export, and a training job that
includes labelled captures."""

from __future__ import annotations

import io
import sqlite3
import tarfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from prometheus_client import REGISTRY

from app.core.artifacts import load_model, read_metadata
from app.core.captures import BATCH_WINDOW_S, CapturePolicy, Capturer
from app.core.captures_export import IMAGES_FILE, LABELS_FILE, export_tar
from app.core.captures_store import CaptureStore, NewCapture
from app.core.catalogue import MNIST_LABELS
from app.core.job_store import JobStore
from app.core.repository import ModelRepository
from tests.helpers import DATA_ROOT
from training.data import LoadedDataset, is_held_out, parse_idx
from training.worker import WorkerSettings, run_worker

LABELS = list(MNIST_LABELS)


def _new(i: int, model: str = "m", confidence: float = 0.9, pixels: np.ndarray | None = None) -> NewCapture:
    row = [(1 - confidence) / 9] * 10
    row[i % 10] = confidence
    image = pixels if pixels is not None else np.random.default_rng(i).random((28, 28), dtype=np.float32)
    return NewCapture(model, "1", image, row, LABELS, f"req-{i}", None, 1e9 + i)


@pytest.fixture()
def store(store_url: str, tmp_path: Path) -> CaptureStore:
    return CaptureStore(JobStore(store_url), tmp_path / ".captures")


def _dropped(model: str) -> float:
    return REGISTRY.get_sample_value("pixelserve_captures_total", {"model": model, "outcome": "dropped"}) or 0.0


def test_search_filters_labels_and_delete(store: CaptureStore) -> None:
    ids = store.add([_new(i, confidence=0.3 + 0.05 * i) for i in range(10)])
    assert [c["id"] for c in store.search(limit=1000)] == sorted(ids, reverse=True)  # newest first
    assert store.search(model="other") == [] and store.search(version="2") == []
    ranged = store.search(min_confidence=0.49, max_confidence=0.61)
    assert {round(c["confidence"], 2) for c in ranged} == {0.5, 0.55, 0.6}
    store.set_label(ids[0], "7")
    store.set_label(ids[1], "3")
    assert {c["id"] for c in store.search(labelled=True)} == {ids[0], ids[1]}
    assert len(store.search(labelled=False)) == 8
    assert [c["id"] for c in store.search(label="7")] == [ids[0]]
    assert [c["id"] for c in store.search(limit=3, before=ids[5])] == [ids[4], ids[3], ids[2]]
    capture = store.get(ids[2])
    assert capture is not None and capture["prediction"] == "2" and capture["request_id"] == "req-2"
    path = store.path_of(capture["file"])
    assert path.is_file() and store.pixels(capture).shape == (28, 28)
    assert store.delete(ids[2]) and not path.exists() and store.get(ids[2]) is None
    assert not store.delete(ids[2]) and store.get(2**62) is None


def test_retention_by_count_and_by_bytes_takes_the_oldest(store: CaptureStore) -> None:
    ids = store.add([_new(i) for i in range(10)])
    files = {c["id"]: store.path_of(c["file"]) for c in store.search()}
    assert store.enforce_retention("m", max_count=4, max_bytes=10**9) == 6
    assert sorted(c["id"] for c in store.search()) == ids[-4:]
    assert all(not files[i].exists() for i in ids[:6]) and all(files[i].exists() for i in ids[-4:])
    sizes = {c["id"]: c["bytes"] for c in store.search()}
    budget = sizes[ids[-1]] + sizes[ids[-2]]  # room for the two newest only
    assert store.enforce_retention("m", max_count=100, max_bytes=budget) == 2
    assert sorted(c["id"] for c in store.search()) == ids[-2:]
    assert store.enforce_retention("m", max_count=100, max_bytes=budget) == 0


def test_a_full_hand_off_drops_and_counts_without_waiting(tmp_path: Path) -> None:
    """The writer is stuck behind a real database lock; offers still return at once and drop."""
    db = tmp_path / "jobs.sqlite"
    store = CaptureStore(JobStore(f"sqlite:///{db}"), tmp_path / ".captures")
    capturer = Capturer(store, {"full": CapturePolicy(rate=1.0, max_count=1000)}, queue_size=2)
    blocker = sqlite3.connect(db, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")  # holds the write lock: the writer's insert waits
    before = _dropped("full")
    first = _new(0, "full")
    capturer.offer("full", "1", first.pixels[None], [first.row], LABELS, None, None)
    # The writer takes it, gathers for its batch window, then waits on the lock: from then on only the
    # queue (2) holds what is offered. (Offered at once instead, the writer could drain them all into
    # its batch while gathering, whenever the scheduler let it run during the loop.)
    time.sleep(BATCH_WINDOW_S + 0.5)
    started = time.perf_counter()
    for i in range(1, 31):
        capture = _new(i, "full")
        capturer.offer("full", "1", capture.pixels[None], [capture.row], LABELS, None, None)
    offering = time.perf_counter() - started
    dropped = _dropped("full") - before
    blocker.execute("ROLLBACK")
    blocker.close()
    capturer.close()
    assert offering < 1.0, f"30 offers took {offering:.3f} s: offer waited for the writer"
    assert dropped == 28  # the queue's 2 got through
    assert len(store.search(model="full", limit=1000)) == 1 + 2


def test_capturer_picks_by_rate_and_confidence_and_enforces_retention(tmp_path: Path) -> None:
    store = CaptureStore(JobStore(f"sqlite:///{tmp_path / 'jobs.sqlite'}"), tmp_path / ".captures")
    policies = {
        "low": CapturePolicy(rate=0.0, below_confidence=0.5),
        "kept": CapturePolicy(rate=1.0, max_count=5, keep_originals=True),
    }
    capturer = Capturer(store, policies, queue_size=100)
    pixels = np.zeros((4, 28, 28), dtype=np.float32)
    rows = [_new(i, confidence=c).row for i, c in enumerate((0.3, 0.9, 0.45, 0.99))]
    capturer.offer("low", "1", pixels, rows, LABELS, "r", [b"a", b"b", b"c", b"d"])
    capturer.offer("uncaptured", "1", pixels, rows, LABELS, "r", None)
    for _ in range(3):
        capturer.offer("kept", "1", pixels, rows, LABELS, "r", [b"a", b"b", b"c", b"d"])
    capturer.close()
    low = store.search(model="low")
    assert sorted(round(c["confidence"], 2) for c in low) == [0.3, 0.45]
    assert all(c["original"] is None for c in low)  # keep_originals is off for "low"
    kept = store.search(model="kept")
    assert len(kept) == 5 and all(store.path_of(c["original"]).read_bytes() in {b"a", b"b", b"c", b"d"} for c in kept)
    assert store.search(model="uncaptured") == []
    assert not (tmp_path / ".captures" / "uncaptured").exists()


def test_export_is_idx_that_training_reads(store: CaptureStore, mnist: LoadedDataset) -> None:
    images = mnist.test.images[:6].numpy()
    ids = store.add([_new(i, pixels=images[i] / 255.0) for i in range(6)])
    for i in (1, 3, 4):
        store.set_label(ids[i], str(int(mnist.test.labels[i])))
    tar, count = export_tar(store, "m", LABELS)
    assert count == 3
    with tarfile.open(fileobj=io.BytesIO(tar)) as archive:
        members = {Path(m.name).name: archive.extractfile(m).read() for m in archive.getmembers()}  # type: ignore[union-attr]
    exported = parse_idx(members[IMAGES_FILE])
    assert exported.shape == (3, 28, 28)
    assert torch.equal(exported, mnist.test.images[[1, 3, 4]])  # 8-bit pixels survive the PNG round trip
    assert parse_idx(members[LABELS_FILE]).tolist() == [int(mnist.test.labels[i]) for i in (1, 3, 4)]


def test_training_job_includes_captures_and_gates_on_them(
    tmp_path: Path, repository: Path, mnist: LoadedDataset
) -> None:
    url = f"sqlite:///{tmp_path / 'jobs.sqlite'}"
    jobs = JobStore(url)
    store = CaptureStore(jobs, repository / ".captures")
    images, truth = mnist.test.images[:80].numpy(), mnist.test.labels[:80].tolist()
    ids = store.add([_new(i, "mnist", pixels=images[i] / 255.0) for i in range(80)])
    for capture_id, label in zip(ids, truth, strict=True):
        store.set_label(capture_id, str(label))
    held = sum(is_held_out(i, 0.5) for i in ids)
    assert 0 < held < 80
    quick = {"model": "mnist", "architecture": "mlp", "dataset": "mnist", "epochs": 1, "max_samples": 64}
    good, _ = jobs.create("mnist", {**quick, "include_captures": True, "captures_held_out": 0.5, "captures_weight": 3})
    # Half the labels wrong before the jobs run: a floor of 0.9 on the held-out slice cannot pass.
    for capture_id, label in zip(ids[::2], truth[::2], strict=True):
        store.set_label(capture_id, str((label + 1) % 10))
    refused, _ = jobs.create(
        "mnist", {**quick, "include_captures": True, "captures_held_out": 0.5, "min_capture_accuracy": 0.9}
    )
    settings = WorkerSettings(
        model_repository=repository,
        job_store_url=url,
        data_dir=DATA_ROOT,
        min_publish_accuracy=0,
        device="cpu",
        torch_threads=1,
        worker_id="capture-test",
    )
    run_worker(settings, threading.Event(), once=True)
    done, failed = jobs.get(good["id"]), jobs.get(refused["id"])
    assert done is not None and done["status"] == "succeeded", done
    meta = read_metadata(ModelRepository(repository).artifact_path("mnist", done["version"]))
    assert meta["captures"] == {"trained": 80 - held, "held_out": held, "weight": 3, "skipped": 0}
    # capture_accuracy is the published model's own on exactly the held-out captures (labels as they were then).
    path = ModelRepository(repository).artifact_path("mnist", done["version"])
    served = load_model(path, torch.device("cpu"))
    held_ids = [i for i in ids if is_held_out(i, 0.5)]
    labels_then = {i: (truth[n] + 1) % 10 if n % 2 == 0 else truth[n] for n, i in enumerate(ids)}
    pixels = torch.stack([torch.tensor(store.pixels(store.get(i) or {})) for i in held_ids]).float() / 255
    with torch.inference_mode():
        predicted = served.forward(pixels.unsqueeze(1)).argmax(dim=1).tolist()
    expected = sum(p == labels_then[i] for p, i in zip(predicted, held_ids, strict=True)) / len(held_ids)
    assert meta["capture_accuracy"] == pytest.approx(expected) and meta["test_accuracy"] > 0
    assert failed is not None and failed["status"] == "failed", failed
    assert "held-out captures is below the floor 0.9000" in failed["error"]


def test_a_tightened_policy_applies_at_start_without_new_captures(tmp_path: Path) -> None:
    store = CaptureStore(JobStore(f"sqlite:///{tmp_path / 'jobs.sqlite'}"), tmp_path / ".captures")
    ids = store.add([_new(i) for i in range(6)])
    capturer = Capturer(store, {"m": CapturePolicy(rate=0.0, max_count=2)}, queue_size=10)
    try:
        deadline = time.monotonic() + 10
        while len(store.search(model="m")) > 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert sorted(c["id"] for c in store.search(model="m")) == ids[-2:]
    finally:
        capturer.close()
