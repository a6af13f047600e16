"""Request and response bodies of the training-job API."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StrictBool

from app.repository import MODEL_NAME

# The worker's registries (training.networks, training.data) own these names; app/ must not import
# training/, so they are repeated here and a test keeps the two lists equal.
Architecture = Literal["cnn5", "fashion_cnn", "fashion_dnn", "fashion_vgg", "mlp", "mnist_cnn"]
DatasetName = Literal["fashion-mnist", "mnist"]


def _json_number(value: object) -> object:
    """JSON Schema's number and integer: 14.0 is an integer, "14" and false are not numbers at all."""
    if isinstance(value, str | bool):
        raise ValueError("must be a JSON number")
    return value


JsonInt = Annotated[int, BeforeValidator(_json_number)]
JsonFloat = Annotated[float, BeforeValidator(_json_number)]


class TrainRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str = Field(pattern=MODEL_NAME, description="served model name to publish into")
    architecture: Architecture
    dataset: DatasetName
    epochs: JsonInt = Field(5, ge=1, le=100)
    batch_size: JsonInt = Field(128, ge=8, le=4096)
    lr: JsonFloat = Field(3e-3, gt=0, le=1)
    weight_decay: JsonFloat = Field(1e-4, ge=0, le=1)
    label_smoothing: JsonFloat = Field(0.05, ge=0, lt=1)
    augment: StrictBool = True
    max_samples: Annotated[int, Field(ge=64, le=60000), BeforeValidator(_json_number)] | None = Field(
        None, description="train on the first N images only"
    )
    seed: JsonInt = Field(1, ge=0, le=2**31 - 1)
    min_accuracy: Annotated[float, Field(ge=0, le=1), BeforeValidator(_json_number)] | None = Field(
        None, description="publication floor; may raise PIXELSERVE_MIN_PUBLISH_ACCURACY, never lower it"
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
    model_config = ConfigDict(extra="forbid")
    pin: StrictBool = True
