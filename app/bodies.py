"""Request and response bodies of the HTTP API (pydantic): models, predictions, training jobs, versions."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StrictBool

from app.core.captures import CapturePolicy
from app.core.catalogue import Architecture, DatasetName, JobStatus, TrainingParameters, json_number
from app.core.repository import MODEL_NAME
from app.core.rollout import PublishRollout, StoredRollout


class VersionInfo(BaseModel):
    version: str
    architecture: str | None = None
    dataset: str | None = None
    test_accuracy: float | None = None
    created_at: str | None = None
    weights_sha256: str | None = None
    error: str | None = Field(None, description="why this version's metadata could not be read")


class ModelSummary(BaseModel):
    name: str
    served_version: str | None = Field(description="the version answering predictions; null if none loaded")
    versions: list[str]
    labels: list[str]
    architecture: str | None
    dataset: str | None
    preprocessing: str | None
    test_accuracy: float | None
    created_at: str | None
    error: str | None = Field(None, description="why the model is not served, if it is not")


class BatchingInfo(BaseModel):
    max_batch_size: int
    max_delay_ms: float
    requests: int = Field(description="predict requests of this process since start-up, all versions")
    images: int
    forward_passes: int
    failed_requests: int = Field(description="requests whose images failed preprocessing")
    mean_batch_size: float | None = Field(description="images per forward pass")
    batch_sizes: dict[str, int] = Field(description="images per forward pass -> how many passes had that many")


class ModelDetail(ModelSummary):
    batching: BatchingInfo = Field(description="this process's batching policy and counters")
    version_details: list[VersionInfo]
    pinned: bool = Field(False, description="the served version is pinned: newer publications do not take over")
    metadata: dict[str, Any] = Field(description="full metadata embedded in the served artifact")
    rollout: StoredRollout | None = Field(None, description="the canary/shadow policy, if any (admin: /rollout)")
    capture: CapturePolicy | None = Field(None, description="what PIXELSERVE_CAPTURE captures of it; null: off")


class VersionDetail(BaseModel):
    model: str
    version: str
    current: bool = Field(description="the repository's CURRENT points at this version")
    pinned: bool = Field(description="current and pinned: newer publications do not take over")
    served: bool = Field(description="this replica answers predictions with this version")
    metadata: dict[str, Any] = Field(description="full metadata embedded in this version's artifact")


class DatasetEntry(BaseModel):
    name: str
    labels: list[str]
    preprocessing: str = Field(description="the recipe uploads go through: digit or garment")


class CatalogueBody(BaseModel):
    architectures: list[str] = Field(description="what a training job may build")
    datasets: list[DatasetEntry]
    parameters: dict[str, Any] = Field(description="the training parameters' JSON Schema (bounds and defaults)")


class TopK(BaseModel):
    label: str
    probability: float


class PredictionBody(BaseModel):
    model: str
    version: str = Field(description="the model version that computed this answer")
    label: str
    index: int
    confidence: float
    probabilities: dict[str, float] = Field(description="every class, in class order, summing to 1")
    top_k: list[TopK] | None = None
    input_png: str | None = Field(
        None,
        description="with ?include_input=true: the 28x28 input the model saw (after the recipe: crop, scale, "
        "centring, light on dark), a base64 PNG, 8-bit grey",
    )


# -- training jobs and versions (admin) -------------------------------------------------------------


class TrainRequest(TrainingParameters):
    """What to train (model, architecture, dataset), how (the shared training parameters), the floor."""

    model: str = Field(pattern=MODEL_NAME, description="served model name to publish into")
    architecture: Architecture
    dataset: DatasetName
    min_accuracy: Annotated[float, Field(ge=0, le=1), BeforeValidator(json_number)] | None = Field(
        None, description="publication floor; may raise PIXELSERVE_MIN_PUBLISH_ACCURACY, never lower it"
    )
    idempotency_key: str | None = Field(None, min_length=1, max_length=200, description="or an Idempotency-Key header")
    rollout: PublishRollout | None = Field(
        None, description='publish as a canary ({"canary": 0.1}) or a shadow ({"shadow": true}) instead of taking over'
    )


class Progress(BaseModel):
    epoch: int
    epochs: int
    step: int
    steps: int


class JobView(BaseModel):
    id: int
    model: str
    status: JobStatus
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
    times = {key: _when(job[key]) for key in ("created_at", "started_at", "finished_at")}
    return JobView(**{key: job[key] for key in JobView.model_fields if key not in times}, **times)


class Activation(BaseModel):
    model: str
    version: str
    pinned: bool = Field(description="a pinned version stays current when jobs publish newer ones")


class ActivateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    pin: StrictBool = True


class RolloutApplied(BaseModel):
    candidate_loaded: bool = Field(description="this replica routes the candidate's share to it")
    shadow_loaded: bool = Field(description="this replica runs the shadow")
    error: str | None = Field(None, description="why a version the policy names is not applied here")


class RolloutView(BaseModel):
    model: str
    served_version: str | None
    rollout: StoredRollout | None = Field(description="the policy in the repository (null: none)")
    applied: RolloutApplied | None = Field(None, description="the policy as this replica applies it")
    replica_counts: dict[str, Any] | None = Field(
        None, description="what this replica saw of the rollout: requests, agreement, confidence and latency by role"
    )
    fleet_counts: dict[str, int] | None = Field(None, description="every replica's counts, summed in the job store")
    history: list[dict[str, Any]] = Field(description="the model's latest rollout decisions, oldest first")


class Promotion(BaseModel):
    model: str
    version: str = Field(description="the version now current")
    pinned: bool = Field(description="the pointer's pinned flag, kept as it was")
