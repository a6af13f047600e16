"""The training worker: `python -m training.worker` (or `pixelserve-worker`).

Claims queued jobs from the job store, trains, publishes the result as a new version. Runs as
many copies as you like, on any host that shares the job store and the model repository. Its
heartbeat extends the job's lease; a worker that dies (kill -9, lost host) stops heartbeating and
any other worker, or an API replica, reaps the job: requeued while attempts remain, else
`interrupted`.
"""

from __future__ import annotations

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
from pydantic_settings import BaseSettings, SettingsConfigDict

from app.jobs.schema import CANCELLED, FAILED, SUCCEEDED
from app.jobs.store import Job, JobStore
from training.config import TrainConfig
from training.data import LoadedDataset, load_dataset
from training.datasets import dataset_folder
from training.loop import EpochMetrics, TrainingCancelled, train
from training.publish import PublicationRefused, publish

logger = logging.getLogger("pixelserve.worker")
STALE_STAGING_S = 3600


class WorkerSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="PIXELSERVE_", frozen=True, extra="ignore")

    model_repository: Path = Path("models")
    job_store_url: str | None = None
    data_dir: Path | None = Field(
        None, description="first place to look for <dataset>/ IDX folders; then training.datasets' lookup"
    )
    min_publish_accuracy: float = Field(0.8, ge=0, le=1)
    lease_s: float = Field(30.0, gt=0)
    poll_interval_s: float = Field(1.0, gt=0)
    job_max_attempts: int = Field(1, ge=1, description="runs of a job whose worker died before it is `interrupted`")
    worker_id: str = f"{socket.gethostname()}:{os.getpid()}"
    device: str = "auto"
    torch_threads: int | None = Field(None, ge=1)
    log_level: str = "INFO"

    @property
    def job_store(self) -> str:
        return self.job_store_url or f"sqlite:///{(self.model_repository / '.jobs.sqlite').resolve()}"


class JobRun:
    """One claimed job: a heartbeat thread, progress, cancellation and the outcome."""

    def __init__(self, store: JobStore, settings: WorkerSettings, job: Job) -> None:
        self.store, self.settings, self.job = store, settings, job
        self.config = self._config()
        self.progress: dict[str, Any] | None = None
        self.lost = threading.Event()
        self.cancelled = threading.Event()
        self._done = threading.Event()

    def _beat(self) -> None:
        while not self._done.wait(self.settings.lease_s / 3):
            if not self.store.heartbeat(self.job["id"], self.settings.worker_id, self.settings.lease_s, self.progress):
                self.lost.set()
                return
            if self.store.cancel_requested(self.job["id"]):
                self.cancelled.set()

    def should_stop(self) -> bool:
        return self.lost.is_set() or self.cancelled.is_set()

    def on_step(self, epoch: int, step: int, steps: int) -> None:
        self.progress = {"epoch": epoch, "epochs": self.config.epochs, "step": step, "steps": steps}

    def on_epoch(self, metrics: EpochMetrics) -> None:
        self.store.add_epoch(self.job["id"], self.settings.worker_id, vars(metrics))

    def _config(self) -> TrainConfig:
        request = self.job["request"]
        keys = ("architecture", "dataset", "epochs", "batch_size", "lr", "weight_decay", "label_smoothing",
                "augment", "max_samples", "seed")  # fmt: skip
        return TrainConfig(
            model_name=self.job["model"],
            data_dir=dataset_folder(request["dataset"], self.settings.data_dir),  # stat calls only, no download
            device=self.settings.device,
            threads=self.settings.torch_threads,
            **{key: request[key] for key in keys if key in request},
        )

    def load_data(self) -> LoadedDataset:
        # Found or downloaded (once, into the user cache) and verified; a failure fails this job only.
        return load_dataset(self.config.dataset, data_root=self.settings.data_dir)

    def run(self) -> None:
        job_id, worker_id = self.job["id"], self.settings.worker_id
        beat = threading.Thread(target=self._beat, name=f"heartbeat-{job_id}", daemon=True)
        beat.start()
        try:
            config, data = self.config, self.load_data()
            result = train(config, data, self.on_epoch, self.on_step, self.should_stop, progress=False)
            floor = max(self.settings.min_publish_accuracy, self.job["request"].get("min_accuracy") or 0.0)
            version, current = publish(
                self.settings.model_repository, self.store, config, data, result, floor,
                still_owner=lambda: not self.should_stop(),
            )  # fmt: skip
            logger.info("job %s published %s version %s%s", job_id, config.model_name, version,
                        "" if current else " (not current: a version is pinned or newer)")  # fmt: skip
            self.store.finish(job_id, worker_id, SUCCEEDED, version=version)
        except TrainingCancelled:
            if self.lost.is_set():
                logger.warning("job %s: lease lost, stopped without publishing", job_id)
            else:
                self.store.finish(job_id, worker_id, CANCELLED, error="cancelled while running")
        except PublicationRefused as exc:
            self.store.finish(job_id, worker_id, CANCELLED if self.cancelled.is_set() else FAILED, error=str(exc))
        except Exception as exc:  # a job's failure must not kill the worker
            logger.exception("job %s failed", job_id)
            self.store.finish(job_id, worker_id, FAILED, error=f"{type(exc).__name__}: {exc}")
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
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s")
    stop = threading.Event()
    # SIGTERM: finish the current job, then exit (a container stop waits for its grace period).
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    run_worker(settings, stop)


if __name__ == "__main__":
    main()
