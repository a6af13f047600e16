"""Publication of a trained model as a new version that every replica hot-loads.

1. export_model writes the artifact under a temporary name and fsyncs it;
2. the staged file is validated with the server's own loader: it loads, passes its SHA-256 and
   smoke checks, and classifies held-out test images at or above the accuracy floor;
3. in one transaction under the job store's per-model lock: the job is re-read (still running,
   still this worker's, no cancel requested), the folder is renamed into
   <repository>/<name>/<version> (whole or not at all), CURRENT moves forward to it unless an
   admin pinned a version or a newer one is already current, and the job is marked succeeded.
   A cancel is therefore either seen here (nothing is renamed in: a version folder without
   CURRENT would be served as the highest) or comes after the job ended (a 409).
A crash at any point leaves either nothing visible or a complete, valid version.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from app.core.artifacts import ArtifactError, load_model
from app.core.catalogue import JobStatus
from app.core.durable import fsync_dir
from app.core.job_store import STOP_CANCELLED, STOP_LOST, JobStore
from app.core.repository import ModelRepository
from app.core.rollout import PublishRollout, StoredRollout
from app.core.rollout_ledger import RolloutLedger
from training.config import TrainConfig
from training.data import LoadedDataset, Split
from training.export import export_model
from training.loop import TrainResult, to_input

VALIDATION_IMAGES = 2000


class PublicationRefused(Exception):
    """The trained model failed validation; nothing was published."""


class JobStopped(PublicationRefused):
    """The job was cancelled, or this worker lost it, before publication; nothing was published."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"job {reason} before publication: nothing published")
        self.cancelled = reason == STOP_CANCELLED


def held_out_accuracy(path: Path, data: LoadedDataset) -> float:
    return _accuracy(load_model(path, torch.device("cpu")), data.test, VALIDATION_IMAGES)


def _accuracy(model: Any, split: Split, limit: int | None = None) -> float:
    images = to_input(split.images[:limit], torch.device("cpu"))  # [N, 1, 28, 28]
    with torch.inference_mode():
        predicted = model.forward(images).argmax(dim=1)
    return float((predicted == split.labels[:limit]).float().mean())


def check_captures(path: Path, data: LoadedDataset, floor: float | None) -> None:
    """The gate's second floor: accuracy of the artifact itself on the held-out captures."""
    if floor is None:
        return
    held_out = data.captures.held_out if data.captures is not None else None
    if held_out is None or held_out.images.shape[0] == 0:
        raise PublicationRefused(f"min_capture_accuracy {floor:.4f} is set but no labelled capture was held out")
    accuracy = _accuracy(load_model(path, torch.device("cpu")), held_out)
    if accuracy < floor:
        raise PublicationRefused(
            f"accuracy {accuracy:.4f} on {held_out.images.shape[0]} held-out captures is below the floor {floor:.4f}"
        )


def publish(
    repository: Path,
    store: JobStore,
    config: TrainConfig,
    data: LoadedDataset,
    result: TrainResult,
    min_accuracy: float,
    job: tuple[int, str] | None = None,
    stop_reason: Callable[[], str | None] = lambda: None,
    rollout: PublishRollout | None = None,
) -> tuple[str, bool]:
    """Publish; returns (version, whether it became current).

    `job` (id, worker id): publish only while that worker still runs it uncancelled, checked in
    the publishing transaction, which also marks it succeeded. `stop_reason` is a cheaper early
    check after validation, so a job cancelled meanwhile does not wait for the lock. `rollout`: the
    new version becomes the served version's canary or shadow (app/core/rollout.py) instead of taking
    over, when there is a served version to try it against."""
    name = config.model_name
    models = ModelRepository(repository)
    activated: list[bool] = []

    def validate(staged: Path) -> None:
        try:
            accuracy = held_out_accuracy(staged, data)
        except ArtifactError as exc:
            raise PublicationRefused(f"the exported artifact does not load: {exc}") from exc
        if accuracy < min_accuracy:
            raise PublicationRefused(
                f"accuracy {accuracy:.4f} on {VALIDATION_IMAGES} test images is below the floor {min_accuracy:.4f}"
            )
        check_captures(staged, data, config.min_capture_accuracy)
        if (reason := stop_reason()) is not None:
            raise JobStopped(reason)

    def commit(staging: Path, target: Path) -> None:
        with store.model_lock(name) as conn:
            if job is not None:
                reason = store.stop_reason(*job, conn=conn)
                if reason is not None or not store.finish(*job, JobStatus.SUCCEEDED, version=target.name, conn=conn):
                    raise JobStopped(reason or STOP_LOST)  # rolls back; export_model removes the staging folder
            if rollout is not None and models.read_pointer(name)[0] is None and (existing := models.versions(name)):
                # Without CURRENT the highest version is served: point at today's first, or the new folder
                # would take over the moment it is renamed in.
                models.write_pointer(name, existing[-1], pinned=False)
            os.rename(staging, target)  # an OSError here: the number was taken, export_model tries the next
            try:
                fsync_dir(target.parent)
                current, pinned = models.read_pointer(name)
                if current is None:
                    versions = [v for v in models.versions(name) if v != target.name]
                    current = versions[-1] if versions else None
                if rollout is not None and current is not None:
                    by = f"job:{job[0]}" if job else "training"
                    stored = StoredRollout.of(rollout.policy(target.name), by)
                    models.write_rollout(name, stored)
                    RolloutLedger(store).record(conn, name, "published", by, stored.model_dump())
                    activated.append(False)
                    return
                activate = not pinned and (current is None or int(target.name) > int(current))
                if activate:
                    models.write_pointer(name, target.name, pinned=False)
            except Exception as exc:
                # The transaction rolls back (the job stays running): take the folder out again rather
                # than leave a version no job published, and not as an OSError, which export_model retries.
                shutil.rmtree(target, ignore_errors=True)
                raise RuntimeError(f"publication of {name} version {target.name} failed: {exc}") from exc
            activated.append(activate)

    folder = export_model(repository, name, config, data, result, validate=validate, commit=commit)
    return folder.name, activated[0]
