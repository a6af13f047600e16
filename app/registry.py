"""The models this process serves, loaded from the repository at start-up."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch

from app.artifacts import ArtifactError, LoadedModel, load_model
from app.errors import ModelNotFound
from app.repository import ModelRepository

logger = logging.getLogger("pixelserve.registry")


@dataclass
class ModelRegistry:
    repository: ModelRepository
    device: torch.device
    wanted: list[str] | None = None  # None: every model in the repository
    models: dict[str, LoadedModel] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)  # name -> why it is not served

    def expected_names(self) -> list[str]:
        return list(self.wanted) if self.wanted is not None else self.repository.model_names()

    def load_all(self) -> None:
        for name in self.expected_names():
            version = self.repository.current_version(name)
            if version is None:
                self.errors[name] = f"no version of {name!r} in {self.repository.root}"
                logger.error("model %s: %s", name, self.errors[name])
                continue
            try:
                self.models[name] = load_model(self.repository.artifact_path(name, version), self.device)
                self.errors.pop(name, None)
                logger.info("model %s version %s loaded", name, version)
            except ArtifactError as exc:
                self.errors[name] = str(exc)
                logger.error("model %s version %s refused: %s", name, version, exc)

    @property
    def ready(self) -> bool:
        expected = self.expected_names()
        return bool(expected) and all(name in self.models for name in expected)

    def get(self, name: str) -> LoadedModel:
        try:
            return self.models[name]
        except KeyError:
            served = ", ".join(sorted(self.models)) or "none"
            raise ModelNotFound(f"no model named {name!r}; served models: {served}") from None
