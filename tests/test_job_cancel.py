"""Cancelling a running job through the real store (SQLite, and PostgreSQL when configured): the
worker stops within a step, and a cancel that lands just before the pointer swap publishes nothing."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from app.core.catalogue import JobStatus
from app.core.job_store import JobStore
from app.core.repository import ModelRepository
from tests.helpers import DATA_ROOT, tiny_config
from training.data import LoadedDataset
from training.loop import train
from training.publish import JobStopped, publish
from training.worker import JobRun, WorkerSettings

QUICK = {"architecture": "mlp", "dataset": "mnist", "epochs": 1, "max_samples": 256, "batch_size": 64}
LONG = {"architecture": "mnist_cnn", "dataset": "mnist", "epochs": 50, "max_samples": 60000, "batch_size": 64}


def settings(repository: Path, store_url: str) -> WorkerSettings:
    # A lease of an hour: the heartbeat (every lease/3) cannot be what notices the cancel here.
    return WorkerSettings(
        model_repository=repository, job_store_url=store_url, data_dir=DATA_ROOT, lease_s=3600,
        min_publish_accuracy=0, worker_id="w1", torch_threads=1, device="cpu",
    )  # fmt: skip


def on_disk(repository: Path) -> tuple[list[str], tuple[str | None, bool], list[str]]:
    """(versions, CURRENT, every entry of the model's folder): what a replica could serve."""
    models = ModelRepository(repository)
    return (
        models.versions("mnist"),
        models.read_pointer("mnist"),
        sorted(p.name for p in (repository / "mnist").iterdir()),
    )


def test_cancel_mid_training_stops_within_a_step(repository: Path, store_url: str) -> None:
    store = JobStore(store_url)
    before = on_disk(repository)
    job_id = store.create("mnist", LONG)[0]["id"]
    job = store.claim("w1", lease_seconds=3600)
    assert job is not None and job["id"] == job_id
    run = JobRun(store, settings(repository, store_url), job)
    worker = threading.Thread(target=run.run)
    worker.start()
    deadline = time.monotonic() + 120
    while (run.progress is None or run.progress["step"] < 3) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert run.progress is not None, "training never started"
    cancelled_at, step_at_cancel = time.monotonic(), run.progress["step"]
    assert JobStore(store_url).cancel(job_id)["cancel_requested"]  # type: ignore[index]  # the API's own call
    worker.join(timeout=8)  # the heartbeat would take 1200 s; 50 epochs of training far longer
    assert not worker.is_alive(), "the cancel did not stop training"
    stopped_after = time.monotonic() - cancelled_at
    ended = store.get(job_id)
    assert ended is not None and ended["status"] == JobStatus.CANCELLED and ended["version"] is None
    assert "cancel" in ended["error"]
    assert run.progress["epoch"] == 1 and run.progress["step"] < run.progress["steps"]
    assert on_disk(repository) == before  # no version folder, no staging left, CURRENT as it was
    print(f"stopped {stopped_after:.2f}s and {run.progress['step'] - step_at_cancel} steps after the cancel")


class CancelledJustBeforeSwap(JobRun):
    """Each of the publication's early checks passes, and the admin's cancel commits right after:
    the race that only the publishing transaction's own check can catch."""

    def stop_reason(self) -> str | None:
        JobStore(self.settings.job_store).cancel(self.job["id"])
        return None


def test_cancel_between_validation_and_swap_publishes_nothing(repository: Path, store_url: str) -> None:
    store = JobStore(store_url)
    before = on_disk(repository)
    job_id = store.create("mnist", QUICK)[0]["id"]
    job = store.claim("w1", lease_seconds=3600)
    assert job is not None
    CancelledJustBeforeSwap(store, settings(repository, store_url), job).run()
    ended = store.get(job_id)
    assert ended is not None and ended["status"] == JobStatus.CANCELLED and ended["version"] is None
    assert "before publication" in ended["error"]
    assert on_disk(repository) == before


def test_publication_and_the_jobs_end_commit_together(repository: Path, store_url: str, mnist: LoadedDataset) -> None:
    store = JobStore(store_url)
    config = tiny_config("mnist", "mlp", "mnist", samples=256)
    result = train(config, mnist, progress=False)
    job_id = store.create("mnist", QUICK)[0]["id"]
    store.claim("w1", lease_seconds=3600)

    # Flagged for cancel before the lock is taken: refused, the job left running for its worker to end.
    store.cancel(job_id)
    before = on_disk(repository)
    with pytest.raises(JobStopped) as refused:
        publish(repository, store, config, mnist, result, 0.0, job=(job_id, "w1"))
    assert refused.value.cancelled and on_disk(repository) == before
    assert store.get(job_id)["status"] == JobStatus.RUNNING  # type: ignore[index]

    # Another worker's job (this one lost it): refused as lost, not cancelled.
    other = store.create("mnist", QUICK)[0]["id"]
    store.claim("w2", lease_seconds=3600)
    with pytest.raises(JobStopped) as lost:
        publish(repository, store, config, mnist, result, 0.0, job=(other, "w1"))
    assert not lost.value.cancelled and on_disk(repository) == before

    # Published: the job is succeeded in the same transaction, so a later cancel finds it ended.
    version, current = publish(repository, store, config, mnist, result, 0.0, job=(other, "w2"))
    done = store.get(other)
    assert current and done is not None and done["status"] == JobStatus.SUCCEEDED and done["version"] == version
    assert ModelRepository(repository).read_pointer("mnist") == (version, False)
    assert not store.cancel(other)["cancel_requested"]  # type: ignore[index]
