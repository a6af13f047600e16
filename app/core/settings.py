"""Typed settings from `PIXELSERVE_*` environment variables; a bad value stops start-up with a clear message.

`CommonSettings` holds what the API server and the training worker (training/worker.py) share;
each adds its own fields on top, so a variable means the same thing, with the same type, in both.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from app.core.captures import CapturePolicy
from app.core.logs import LogFormat
from app.core.repository import is_model_name


@dataclass(frozen=True)
class BatchPolicy:
    max_batch_size: int
    max_delay_ms: float


@dataclass(frozen=True)
class OverloadPolicy:
    """When the batcher sheds a request (503) instead of queueing it: see app/core/batching.py."""

    max_queued_images: int
    max_queue_delay_s: float


class BatchOverride(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    max_batch_size: int | None = Field(None, ge=1, le=4096)
    max_delay_ms: float | None = Field(None, ge=0, le=1000)


class CommonSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="PIXELSERVE_", frozen=True, extra="ignore")

    model_repository: Path = Field(
        Path("models"), description="folder holding <name>/<version>/model.pt (and/or model.pt2)"
    )
    job_store_url: str | None = Field(
        None, description="SQLAlchemy URL of the job store; default: SQLite file <model_repository>/.jobs.sqlite"
    )
    job_max_attempts: int = Field(1, ge=1, description="runs of a job whose worker died before it is `interrupted`")
    device: Literal["cpu", "cuda", "auto"] = Field("auto", description="auto: CUDA when torch sees a GPU")
    torch_threads: int | None = Field(None, ge=1, le=256, description="torch intra-op threads per process")
    log_level: Literal["debug", "info", "warning", "error", "critical"] = "info"
    log_format: LogFormat = Field("text", description="text lines, or one JSON object per line")
    capture_dir: Path | None = Field(
        None, description="folder of captured inputs (PIXELSERVE_CAPTURE); default: <model_repository>/.captures"
    )

    @property
    def job_store(self) -> str:
        return self.job_store_url or f"sqlite:///{(self.model_repository / '.jobs.sqlite').resolve()}"

    @property
    def captures_root(self) -> Path:
        return self.capture_dir or self.model_repository / ".captures"

    @field_validator("log_level", mode="before")
    @classmethod
    def _lower(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value


class Settings(CommonSettings):
    """The API server's settings."""

    model_config = SettingsConfigDict(env_prefix="PIXELSERVE_", frozen=True, extra="forbid")

    models: Annotated[list[str] | None, NoDecode] = Field(
        None, description="models to serve (JSON list or comma-separated); default: every model in the repository"
    )
    # Defaults of the common fields that differ for serving: the CPU unless asked (batching and the
    # thread counts were tuned there), and one torch thread per process (processes scale past the GIL).
    device: Literal["cpu", "cuda", "auto"] = Field("cpu", description="auto: CUDA when torch sees a GPU")
    torch_threads: int = Field(1, ge=1, le=256, description="torch intra-op threads per process")
    inference_threads: int = Field(
        1, ge=1, le=64, description="batching threads that decode, preprocess and run the model (off the event loop)"
    )
    artifact_format: Literal["torchscript", "torch.export"] = Field(
        "torchscript", description="which file to serve when a version has both model.pt and model.pt2"
    )
    optimize: bool = Field(True, description="freeze + optimize_for_inference TorchScript models on CPU at load")
    runtime: Literal["torchscript", "onnxruntime"] = Field(
        "torchscript",
        description="onnxruntime: serve each version's model.onnx when it agrees with its model.pt (else model.pt)",
    )
    max_batch_size: int = Field(16, ge=1, le=4096, description="most images in one forward pass; 1: no batching")
    max_delay_ms: float = Field(
        2.0, ge=0, le=1000, description="longest wait for more requests after the first of a batch"
    )
    batching: Annotated[dict[str, BatchOverride], NoDecode] = Field(
        default_factory=dict,
        description='per-model overrides, JSON: {"fashion": {"max_batch_size": 32, "max_delay_ms": 1}}',
    )
    max_queued_images: int = Field(
        256,
        ge=1,
        description="most images queued (received, not yet run) per process; past it requests get 503 at once",
    )
    max_queue_delay_ms: float = Field(
        100.0,
        gt=0,
        description="shed (503) while the oldest queued request, or the queue's measured cost, is past this wait",
    )
    request_timeout_s: float = Field(
        10.0, gt=0, description="work still queued this long after its request arrived is dropped and answered 504"
    )
    max_images_per_request: int = Field(64, ge=1, le=4096, description="most `file` parts in one predict request")
    workers: int = Field(1, ge=1, le=64, description="uvicorn worker processes of `python -m app`")
    max_body_bytes: int = Field(10 * 1024 * 1024, ge=1024, description="largest accepted request body")
    max_image_pixels: int = Field(
        4096 * 4096,
        ge=784,
        description="largest image, width x height as decoded (a big JPEG decodes scaled down); 16.8 MP: a 12 MP "
        "phone photo or a 4K screenshot fits; more detail cannot help: every image is shrunk to 512 px, then 28",
    )
    max_request_pixels: int = Field(
        2 * 4096 * 4096,
        ge=784,
        description="decoded pixels of one request's images together, checked from their headers before any is "
        "decoded: bounds the CPU one small request can cost (tiny files may declare huge canvases)",
    )
    heavy_request_pixels: int = Field(
        512 * 512,
        ge=0,
        description="a request decoding more pixels (+ 40,000 per image for its fixed costs) is decoded in the "
        "large-image lane (a thread of its own), not the inference thread: it delays other large uploads, not everyone",
    )
    max_header_bytes: int = Field(
        64 * 1024, ge=1024, description="largest request line + headers (app.http_protocol answers 431 past it)"
    )
    max_header_count: int = Field(100, ge=8, le=10_000, description="most header fields in one request (431 past it)")
    reload_interval_s: float = Field(2.0, ge=0, description="how often to look for a new current version; 0: never")
    metrics_port: int | None = Field(
        None,
        ge=1,
        le=65535,
        description="serve Prometheus /metrics on this port (all workers merged) instead of the main port",
    )
    access_log: bool = Field(True, description="one structured line per request (uvicorn's own access log is off)")
    ui: bool = Field(True, description="serve the playground (/ui; / redirects there) and admin console (/ui/admin)")
    capture: Annotated[dict[str, CapturePolicy], NoDecode] = Field(
        default_factory=dict,
        description='per-model capture, JSON: {"mnist": {"rate": 0.01, "below_confidence": 0.6, "keep_originals": '
        'false, "max_count": 10000, "max_bytes": 104857600}}; models not named are never captured',
    )
    capture_queue: int = Field(
        1024, ge=1, le=65536, description="captured images waiting for the writer per process; past it they are dropped"
    )
    admin_token: SecretStr | None = Field(None, description="Bearer token of the admin routes; unset: they refuse")
    drain_s: float = Field(0.0, ge=0, le=600, description="after SIGTERM: seconds not-ready but serving")
    shutdown_grace_s: float = Field(30.0, gt=0, description="then: longest wait for in-flight requests")

    def batch_policy(self, model: str) -> BatchPolicy:
        override = self.batching.get(model)
        return BatchPolicy(
            max_batch_size=(override and override.max_batch_size) or self.max_batch_size,
            max_delay_ms=self.max_delay_ms
            if override is None or override.max_delay_ms is None
            else override.max_delay_ms,
        )

    @property
    def overload(self) -> OverloadPolicy:
        return OverloadPolicy(self.max_queued_images, self.max_queue_delay_ms / 1000)

    @field_validator("models", mode="before")
    @classmethod
    def _split_names(cls, value: object) -> object:
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                return json.loads(text)
            return [name.strip() for name in text.split(",") if name.strip()]
        return value

    @field_validator("batching", mode="before")
    @classmethod
    def _parse_batching(cls, value: object) -> object:
        return json.loads(value) if isinstance(value, str) else value

    @field_validator("capture", mode="before")
    @classmethod
    def _parse_capture(cls, value: object) -> object:
        value = json.loads(value) if isinstance(value, str) else value
        if isinstance(value, dict) and (bad := [name for name in value if not is_model_name(str(name))]):
            raise ValueError(f"not model names: {bad}")
        return value

    @field_validator("model_repository")
    @classmethod
    def _repository_exists(cls, value: Path) -> Path:
        if not value.is_dir():
            raise ValueError(f"model repository {str(value)!r} is not a directory")
        return value

    @field_validator("admin_token", mode="before")
    @classmethod
    def _empty_token_is_none(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value
