"""Typed settings from `PIXELSERVE_*` environment variables; a bad value stops start-up with a clear message."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="PIXELSERVE_", frozen=True)

    model_repository: Path = Field(Path("models"), description="folder holding <name>/<version>/model.pt")
    models: Annotated[list[str] | None, NoDecode] = Field(
        None, description="models to serve (JSON list or comma-separated); default: every model in the repository"
    )
    device: Literal["cpu", "cuda", "auto"] = "cpu"
    torch_threads: int = Field(1, ge=1, le=256, description="torch intra-op threads per process")
    inference_threads: int = Field(
        1, ge=1, le=256, description="threads that decode, preprocess and run the model (off the event loop)"
    )
    max_body_bytes: int = Field(10 * 1024 * 1024, ge=1024, description="largest accepted request body")
    max_image_pixels: int = Field(40_000_000, ge=784, description="largest accepted image, width x height")
    log_level: Literal["debug", "info", "warning", "error", "critical"] = "info"
    reload_interval_s: float = Field(2.0, ge=0, description="how often to look for a new current version; 0: never")
    admin_token: SecretStr | None = Field(None, description="Bearer token of the admin routes; unset: they refuse")
    job_store_url: str | None = Field(
        None, description="SQLAlchemy URL of the job store; default: SQLite file <model_repository>/.jobs.sqlite"
    )
    drain_s: float = Field(0.0, ge=0, le=600, description="after SIGTERM: seconds not-ready but serving")
    shutdown_grace_s: float = Field(30.0, gt=0, description="then: longest wait for in-flight requests")
    job_max_attempts: int = Field(1, ge=1, description="runs of a job whose worker died before it is `interrupted`")

    @property
    def job_store(self) -> str:
        return self.job_store_url or f"sqlite:///{(self.model_repository / '.jobs.sqlite').resolve()}"

    @field_validator("models", mode="before")
    @classmethod
    def _split_names(cls, value: object) -> object:
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                return json.loads(text)
            return [name.strip() for name in text.split(",") if name.strip()]
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

    @field_validator("log_level", mode="before")
    @classmethod
    def _lower(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value
