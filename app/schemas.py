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


class ModelDetail(ModelSummary):
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
