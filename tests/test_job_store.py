"""The job store against real SQLite and real PostgreSQL: atomic claims, leases, cancel, fencing."""

from __future__ import annotations

import threading
import time

import pytest

from app.core.catalogue import JobStatus
from app.core.job_store import STOP_CANCELLED, STOP_LOST, JobStore

REQUEST = {"architecture": "mlp", "dataset": "mnist", "epochs": 1}


def test_create_get_list_and_idempotency(store_url: str) -> None:
    store = JobStore(store_url)
    first, created = store.create("mnist", REQUEST)
    assert created and first["status"] == JobStatus.QUEUED and first["metrics"] == []
    keyed, created = store.create("mnist", REQUEST, idempotency_key="abc")
    again, created_again = store.create("mnist", REQUEST, idempotency_key="abc")
    assert created and not created_again and again["id"] == keyed["id"]
    assert [job["id"] for job in store.recent()] == [keyed["id"], first["id"]]  # newest first
    assert store.get(999) is None
    JobStore(store_url)  # a second start-up on an existing schema is harmless


def test_concurrent_claims_never_share_a_job(store_url: str) -> None:
    store = JobStore(store_url)
    created = {store.create("mnist", REQUEST)[0]["id"] for _ in range(30)}
    claimed: list[int] = []
    lock = threading.Lock()

    def claimer(worker: str) -> None:
        own = JobStore(store_url)  # one engine per worker, as separate processes have
        while (job := own.claim(worker, lease_seconds=60)) is not None:
            with lock:
                claimed.append(job["id"])

    threads = [threading.Thread(target=claimer, args=(f"w{i}",)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(claimed) == sorted(created)  # every job once, none twice
    assert all(job["status"] == JobStatus.RUNNING and job["attempts"] == 1 for job in store.recent())


def test_claim_order_and_heartbeat_progress(store_url: str) -> None:
    store = JobStore(store_url)
    older = store.create("a", REQUEST)[0]
    store.create("b", REQUEST)
    job = store.claim("w1", lease_seconds=30)
    assert job is not None and job["id"] == older["id"] and job["worker_id"] == "w1"
    assert store.heartbeat(job["id"], "w1", 30, {"epoch": 1, "epochs": 2, "step": 5, "steps": 10})
    assert not store.heartbeat(job["id"], "w2", 30, None)  # another worker cannot extend it
    assert store.get(job["id"])["progress"]["step"] == 5  # type: ignore[index]
    store.add_epoch(job["id"], "w1", {"epoch": 1, "train_loss": 0.5, "test_accuracy": 0.9})
    assert store.finish(job["id"], "w1", JobStatus.SUCCEEDED, version="3")
    done = store.get(job["id"])
    assert done is not None and done["status"] == JobStatus.SUCCEEDED and done["version"] == "3"
    assert done["metrics"][0]["test_accuracy"] == 0.9 and done["finished_at"] >= done["started_at"]


def test_expired_lease_is_interrupted_or_requeued_and_fences_the_old_worker(store_url: str) -> None:
    store = JobStore(store_url)
    job = store.create("mnist", REQUEST)[0]
    store.claim("dead", lease_seconds=0.2)
    assert store.reap(max_attempts=2) == []  # lease still valid
    time.sleep(0.4)
    assert store.reap(max_attempts=2) == [job["id"]]
    assert store.get(job["id"])["status"] == JobStatus.QUEUED  # type: ignore[index]  # retried: attempts remain
    assert not store.finish(job["id"], "dead", JobStatus.SUCCEEDED, version="9")  # the lost worker cannot finish it
    store.claim("second", lease_seconds=0.2)
    time.sleep(0.4)
    store.reap(max_attempts=2)
    reaped = store.get(job["id"])
    assert reaped is not None and reaped["status"] == JobStatus.INTERRUPTED and reaped["attempts"] == 2
    assert "heartbeat" in reaped["error"] and reaped["version"] is None


def test_cancel_queued_and_running(store_url: str) -> None:
    store = JobStore(store_url)
    queued = store.create("a", REQUEST)[0]
    running = store.create("b", REQUEST)[0]
    assert store.cancel(queued["id"])["status"] == JobStatus.CANCELLED  # type: ignore[index]
    assert store.claim("w", 30)["id"] == running["id"]  # type: ignore[index]  # cancelled jobs are not claimed
    after = store.cancel(running["id"])
    assert after is not None and after["status"] == JobStatus.RUNNING and after["cancel_requested"]
    assert store.cancel_requested(running["id"])
    assert store.claim("w", 30) is None


def test_model_lock_serialises_writers(store_url: str) -> None:
    JobStore(store_url)  # schema first, so the writers only contend for the lock
    inside, overlaps = [0], [0]

    def writer() -> None:
        with JobStore(store_url).model_lock("mnist"):
            inside[0] += 1
            overlaps[0] = max(overlaps[0], inside[0])
            time.sleep(0.05)
            inside[0] -= 1

    threads = [threading.Thread(target=writer) for _ in range(5)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert overlaps[0] == 1


def test_ids_the_column_cannot_hold_are_not_found(store_url: str) -> None:
    store = JobStore(store_url)
    store.create("mnist", REQUEST)
    for job_id in (store.max_id + 1, 2**63, 2**64, -1, 0):  # PostgreSQL's int4 ends at 2**31 - 1
        assert store.get(job_id) is None and store.cancel(job_id) is None
    assert store.get(store.max_id) is None and store.cancel(store.max_id) is None  # held, just not there


def test_stop_reason_and_a_finish_inside_the_model_lock(store_url: str) -> None:
    store = JobStore(store_url)
    job_id = store.create("mnist", REQUEST)[0]["id"]
    assert store.stop_reason(job_id, "w1") == STOP_LOST  # queued: not this worker's
    store.claim("w1", 30)
    assert store.stop_reason(job_id, "w1") is None
    assert store.stop_reason(job_id, "w2") == STOP_LOST
    with pytest.raises(RuntimeError), store.model_lock("mnist") as conn:  # a failed publication rolls back
        assert store.stop_reason(job_id, "w1", conn=conn) is None
        assert store.finish(job_id, "w1", JobStatus.SUCCEEDED, version="2", conn=conn)
        raise RuntimeError("the rename failed")
    assert store.get(job_id)["status"] == JobStatus.RUNNING  # type: ignore[index]
    store.cancel(job_id)
    assert store.stop_reason(job_id, "w1") == STOP_CANCELLED
    with store.model_lock("mnist") as conn:
        assert store.stop_reason(job_id, "w1", conn=conn) == STOP_CANCELLED
    assert store.finish(job_id, "w1", JobStatus.CANCELLED, error="cancelled")
    assert store.stop_reason(job_id, "w1") == STOP_LOST  # ended: nothing left to go on with
