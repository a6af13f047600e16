"""Response bodies of the public API."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


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
    metadata: dict[str, Any] = Field(description="full metadata embedded in the served artifact")


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
