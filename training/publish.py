"""Publication of a trained model as a new version that every replica hot-loads.

1. export_model writes the artifact under a temporary name and fsyncs it;
2. the staged file is validated with the server's own loader: it loads, passes its SHA-256 and
   smoke checks, and classifies held-out test images at or above the accuracy floor;
3. it is renamed into <repository>/<name>/<version> (a rename either happens whole or not at all);
4. under the job store's per-model lock, CURRENT moves forward to it, unless an admin pinned a
   version or a newer one is already current.
A crash at any point leaves either nothing visible or a complete, valid version.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from app.artifacts import ArtifactError, load_model
from app.jobs.store import JobStore
from app.repository import ModelRepository
from training.config import TrainConfig
from training.data import LoadedDataset
from training.export import export_model
from training.loop import TrainResult, to_input

VALIDATION_IMAGES = 2000


class PublicationRefused(Exception):
    """The trained model failed validation; nothing was published."""


def held_out_accuracy(path: Path, data: LoadedDataset) -> float:
    model = load_model(path, torch.device("cpu"))
    images = to_input(data.test.images[:VALIDATION_IMAGES], torch.device("cpu"))  # [N, 1, 28, 28]
    with torch.inference_mode():
        predicted = model.forward(images).argmax(dim=1)
    return float((predicted == data.test.labels[:VALIDATION_IMAGES]).float().mean())


def publish(
    repository: Path,
    store: JobStore,
    config: TrainConfig,
    data: LoadedDataset,
    result: TrainResult,
    min_accuracy: float,
    still_owner: Callable[[], bool] = lambda: True,
) -> tuple[str, bool]:
    """Publish; returns (version, whether it became current)."""

    def validate(staged: Path) -> None:
        try:
            accuracy = held_out_accuracy(staged, data)
        except ArtifactError as exc:
            raise PublicationRefused(f"the exported artifact does not load: {exc}") from exc
        if accuracy < min_accuracy:
            raise PublicationRefused(
                f"accuracy {accuracy:.4f} on {VALIDATION_IMAGES} test images is below the floor {min_accuracy:.4f}"
            )
        if not still_owner():
            raise PublicationRefused("this worker lost the job (lease expired or cancelled) before publication")

    folder = export_model(repository, config.model_name, config, data, result, validate=validate)
    version = folder.name
    models = ModelRepository(repository)
    with store.model_lock(config.model_name):
        current, pinned = models.read_pointer(config.model_name)
        if current is None:
            versions = [v for v in models.versions(config.model_name) if v != version]
            current = versions[-1] if versions else None
        activate = not pinned and (current is None or int(version) > int(current))
        if activate:
            models.write_pointer(config.model_name, version, pinned=False)
    return version, activate
