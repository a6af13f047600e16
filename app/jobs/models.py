"""Request and response bodies of the training-job API."""

from __future__ import annotations

import datetime as dt
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from app.repository import MODEL_NAME

# The worker's registries (training.networks, training.data) own these names; app/ must not import
# training/, so they are repeated here and a test keeps the two lists equal.
Architecture = Literal["cnn5", "fashion_cnn", "fashion_dnn", "fashion_vgg", "mlp", "mnist_cnn"]
DatasetName = Literal["fashion-mnist", "mnist"]


class TrainRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)  # "5" is not an int nor 0 a bool: the schema says so

    model: str = Field(pattern=MODEL_NAME, description="served model name to publish into")
    architecture: Architecture
    dataset: DatasetName
    epochs: int = Field(5, ge=1, le=100)
    batch_size: int = Field(128, ge=8, le=4096)
    lr: float = Field(3e-3, gt=0, le=1)
    weight_decay: float = Field(1e-4, ge=0, le=1)
    label_smoothing: float = Field(0.05, ge=0, lt=1)
    augment: bool = True
    max_samples: int | None = Field(None, ge=64, le=60000, description="train on the first N images only")
    seed: int = Field(1, ge=0, le=2**31 - 1)
    min_accuracy: float | None = Field(
        None, ge=0, le=1, description="publication floor; may raise PIXELSERVE_MIN_PUBLISH_ACCURACY, never lower it"
    )
    idempotency_key: str | None = Field(None, min_length=1, max_length=200, description="or an Idempotency-Key header")


class Progress(BaseModel):
    epoch: int
    epochs: int
    step: int
    steps: int


class JobView(BaseModel):
    id: int
    model: str
    status: Literal["queued", "running", "succeeded", "failed", "cancelled", "interrupted"]
    request: dict[str, Any]
    progress: Progress | None
    metrics: list[dict[str, Any]] = Field(description="per epoch: epoch, train_loss, test_accuracy, seconds")
    version: str | None = Field(description="the version this job published")
    error: str | None
    attempts: int
    cancel_requested: bool
    created_at: dt.datetime
    started_at: dt.datetime | None
    finished_at: dt.datetime | None


def _when(seconds: float | None) -> dt.datetime | None:
    return dt.datetime.fromtimestamp(seconds, dt.UTC) if seconds is not None else None


def job_view(job: dict[str, Any]) -> JobView:
    return JobView(
        id=job["id"], model=job["model"], status=job["status"], request=job["request"], progress=job["progress"],
        metrics=job["metrics"], version=job["version"], error=job["error"], attempts=job["attempts"],
        cancel_requested=job["cancel_requested"], created_at=_when(job["created_at"]),
        started_at=_when(job["started_at"]), finished_at=_when(job["finished_at"]),
    )  # fmt: skip


class Activation(BaseModel):
    model: str
    version: str
    pinned: bool = Field(description="a pinned version stays current when jobs publish newer ones")


class ActivateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)  # "5" is not an int nor 0 a bool: the schema says so
    pin: bool = True
