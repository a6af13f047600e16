"""The training worker: `python -m training.worker` (or `pixelserve-worker`).

Claims queued jobs from the job store, trains, publishes the result as a new version. Runs as
many copies as you like, on any host that shares the job store and the model repository. Its
heartbeat extends the job's lease; a worker that dies (kill -9, lost host) stops heartbeating and
any other worker, or an API replica, reaps the job: requeued while attempts remain, else
`interrupted`.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import signal
import socket
import threading
import time
from pathlib import Path
from typing import Any

from pydantic import Field
from sqlalchemy.exc import SQLAlchemyError

from app.core import logs
from app.core.captures_store import CaptureStore
from app.core.catalogue import JobStatus
from app.core.job_store import STOP_CANCELLED, STOP_LOST, Job, JobStore
from app.core.rollout import PUBLISH_ROLLOUT
from app.core.settings import CommonSettings
from training.config import TrainConfig
from training.data import LoadedDataset, load_captures, load_dataset
from training.datasets import dataset_folder
from training.loop import EpochMetrics, TrainingCancelled, train
from training.publish import JobStopped, PublicationRefused, publish

logger = logging.getLogger("pixelserve.worker")
STALE_STAGING_S = 3600
# How often the training loop asks the store whether its job was cancelled or taken away: a cancel
# stops training within this or one step, whichever is longer, for one small query per interval.
STOP_POLL_S = 0.5


class WorkerSettings(CommonSettings):
    """The worker's settings: the common ones (repository, job store, device, threads, log level) and its own."""

    data_dir: Path | None = Field(
        None, description="first place to look for <dataset>/ IDX folders; then training.datasets' lookup"
    )
    min_publish_accuracy: float = Field(0.8, ge=0, le=1)
    lease_s: float = Field(30.0, gt=0)
    poll_interval_s: float = Field(1.0, gt=0)
    worker_id: str = f"{socket.gethostname()}:{os.getpid()}"


class JobRun:
    """One claimed job: a heartbeat thread, progress, cancellation and the outcome."""

    def __init__(self, store: JobStore, settings: WorkerSettings, job: Job) -> None:
        self.store, self.settings, self.job = store, settings, job
        self.config = self._config()
        self.progress: dict[str, Any] | None = None
        self.lost = threading.Event()
        self.cancelled = threading.Event()
        self._done = threading.Event()
        self._polled_at = float("-inf")

    def _beat(self) -> None:
        logs.job_id.set(self.job["id"])  # a thread starts with a context of its own
        while not self._done.wait(self.settings.lease_s / 3):
            if not self.store.heartbeat(self.job["id"], self.settings.worker_id, self.settings.lease_s, self.progress):
                self.lost.set()
                return
            if self.store.cancel_requested(self.job["id"]):
                self.cancelled.set()

    def _poll(self, force: bool = False) -> None:
        """Read the job's row (the heartbeat's every lease/3 is too slow for a cancel)."""
        now = time.monotonic()
        if not force and now - self._polled_at < STOP_POLL_S:
            return
        self._polled_at = now
        try:
            reason = self.store.stop_reason(self.job["id"], self.settings.worker_id)
        except SQLAlchemyError as exc:  # a store hiccup is not a cancel; the lease decides ownership
            logger.warning("job %s: could not check for a cancel: %s", self.job["id"], exc)
            return
        if reason == STOP_CANCELLED:
            self.cancelled.set()
        elif reason == STOP_LOST:
            self.lost.set()

    def should_stop(self) -> bool:
        """Called by the training loop before every step."""
        if not (self.lost.is_set() or self.cancelled.is_set()):
            self._poll()
        return self.lost.is_set() or self.cancelled.is_set()

    def stop_reason(self) -> str | None:
        """A fresh check, for publish() after validation."""
        self._poll(force=True)
        return STOP_LOST if self.lost.is_set() else STOP_CANCELLED if self.cancelled.is_set() else None

    def on_step(self, epoch: int, step: int, steps: int) -> None:
        self.progress = {"epoch": epoch, "epochs": self.config.epochs, "step": step, "steps": steps}

    def on_epoch(self, metrics: EpochMetrics) -> None:
        self.store.add_epoch(self.job["id"], self.settings.worker_id, vars(metrics))

    def _config(self) -> TrainConfig:
        request = self.job["request"]
        shared = TrainConfig.model_fields.keys() & request.keys()  # the job's parameters, by the one model
        return TrainConfig(
            model_name=self.job["model"],
            data_dir=dataset_folder(request["dataset"], self.settings.data_dir),  # stat calls only, no download
            device=self.settings.device,
            threads=self.settings.torch_threads,
            **{key: request[key] for key in shared if key not in ("data_dir", "device", "threads", "dry_run")},
        )

    def load_data(self) -> LoadedDataset:
        # Found or downloaded (once, into the user cache) and verified; a failure fails this job only.
        data = load_dataset(self.config.dataset, data_root=self.settings.data_dir)
        if not self.config.include_captures:
            return data
        store = CaptureStore(self.store, self.settings.captures_root)
        config = self.config
        captures = load_captures(store, config.model_name, data.spec, config.captures_held_out, config.captures_weight)
        logger.info(
            "job %s: %d labelled captures to train on (x%d), %d held out, %d skipped",
            *(self.job["id"], captures.train.labels.shape[0], config.captures_weight),
            *(captures.held_out.labels.shape[0], captures.skipped),
        )
        return dataclasses.replace(data, captures=captures)

    def run(self) -> None:
        """Train, publish and record the outcome; every line logged meanwhile carries the job id."""
        token = logs.job_id.set(self.job["id"])
        try:
            self._run()
        finally:
            logs.job_id.reset(token)

    def _run(self) -> None:
        job_id, worker_id = self.job["id"], self.settings.worker_id
        beat = threading.Thread(target=self._beat, name=f"heartbeat-{job_id}", daemon=True)
        beat.start()
        try:
            config, data = self.config, self.load_data()
            result = train(config, data, self.on_epoch, self.on_step, self.should_stop, progress=False)
            floor = max(self.settings.min_publish_accuracy, self.job["request"].get("min_accuracy") or 0.0)
            rollout = self.job["request"].get("rollout")  # as a canary or a shadow, instead of taking over
            # publish() marks the job succeeded in the transaction that publishes it.
            version, current = publish(
                self.settings.model_repository,
                self.store,
                config,
                data,
                result,
                floor,
                job=(job_id, worker_id),
                stop_reason=self.stop_reason,
                rollout=PUBLISH_ROLLOUT.validate_python(rollout) if rollout else None,
            )
            logger.info(
                "job %s published %s version %s%s",
                job_id,
                config.model_name,
                version,
                "" if current else " (not current: a rollout, a pinned version or a newer one)",
            )
        except (TrainingCancelled, JobStopped) as exc:
            if self.lost.is_set() or (isinstance(exc, JobStopped) and not exc.cancelled):
                logger.warning("job %s: lost (lease expired or reaped), stopped without publishing", job_id)
            else:
                error = str(exc) or "cancelled while running"
                logger.info("job %s: %s", job_id, error)
                self.store.finish(job_id, worker_id, JobStatus.CANCELLED, error=error)
        except PublicationRefused as exc:
            self.store.finish(
                job_id, worker_id, JobStatus.CANCELLED if self.cancelled.is_set() else JobStatus.FAILED, error=str(exc)
            )
        except Exception as exc:  # a job's failure must not kill the worker
            logger.exception("job %s failed", job_id)
            self.store.finish(job_id, worker_id, JobStatus.FAILED, error=f"{type(exc).__name__}: {exc}")
        finally:
            self._done.set()
            beat.join()


def remove_stale_staging(repository: Path) -> None:
    """Staging folders of writers that died mid-export (never read by replicas)."""
    for staging in repository.glob("*/.staging-*"):
        if time.time() - staging.stat().st_mtime > STALE_STAGING_S:
            shutil.rmtree(staging, ignore_errors=True)


def run_worker(settings: WorkerSettings, stop: threading.Event, once: bool = False) -> None:
    store = JobStore(settings.job_store)
    remove_stale_staging(settings.model_repository)
    logger.info("worker %s polling %s", settings.worker_id, store.engine.url.render_as_string(hide_password=True))
    while not stop.is_set():
        for job_id in store.reap(settings.job_max_attempts):
            logger.warning("reaped job %s: its worker stopped heartbeating", job_id)
        job = store.claim(settings.worker_id, settings.lease_s)
        if job is None:
            if once:
                return
            stop.wait(settings.poll_interval_s)
            continue
        logger.info("job %s claimed: %s", job["id"], job["request"])
        JobRun(store, settings, job).run()


def main() -> None:
    settings = WorkerSettings()
    logs.configure_logging(settings.log_level, settings.log_format)
    stop = threading.Event()
    # SIGTERM: finish the current job, then exit (a container stop waits for its grace period).
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    run_worker(settings, stop)


if __name__ == "__main__":
    main()
