"""The models this process serves: loaded at start-up, hot-swapped when the repository moves on.

A swap replaces one dict entry, so a request that already holds the old model finishes with it
and names its version; the next request gets the new one. A version that fails to load, its
SHA-256 check or its smoke prediction is refused: the old one keeps serving and the refusal is
kept in `errors` (shown by GET /models/{name}) until a later version loads.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field

import torch

from app.artifacts import ArtifactError, LoadedModel, load_model
from app.errors import ModelNotFound
from app.optimize import optimized
from app.repository import ModelRepository

logger = logging.getLogger("pixelserve.registry")


@dataclass
class ModelRegistry:
    repository: ModelRepository
    device: torch.device
    wanted: list[str] | None = None  # None: every model in the repository
    optimize: bool = True  # freeze + optimize_for_inference on CPU (app/optimize.py)
    models: dict[str, LoadedModel] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)  # name -> why it (or its newest version) is not served
    refused: set[tuple[str, str]] = field(default_factory=set)  # (name, version) not to retry
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def expected_names(self) -> list[str]:
        return list(self.wanted) if self.wanted is not None else self.repository.model_names()

    def refresh(self) -> list[str]:
        """Load every model whose current version differs from the served one; returns what changed."""
        with self._lock:
            return self._refresh()

    def _refresh(self) -> list[str]:
        changed = []
        for name in self.expected_names():
            version = self.repository.current_version(name)
            if version is None:
                if name not in self.models:
                    self.errors[name] = f"no version of {name!r} in {self.repository.root}"
                continue
            served = self.models.get(name)
            if (served is not None and served.version == version) or (name, version) in self.refused:
                continue
            try:
                loaded = load_model(self.repository.artifact_path(name, version), self.device)
                self.models[name] = optimized(loaded) if self.optimize else loaded
            except ArtifactError as exc:
                self.refused.add((name, version))
                self.errors[name] = f"version {version} refused: {exc}"
                logger.error("model %s version %s refused, %s: %s", name, version,
                             f"still serving {served.version}" if served else "nothing served", exc)  # fmt: skip
                continue
            self.errors.pop(name, None)
            changed.append(name)
            logger.info("model %s version %s loaded%s", name, version, f" (was {served.version})" if served else "")
        return changed

    @property
    def ready(self) -> bool:
        expected = self.expected_names()
        return bool(expected) and all(name in self.models for name in expected)

    def not_ready_reason(self) -> str | None:
        """None when ready; otherwise what is missing and why, for the readiness probes."""
        if self.ready:
            return None
        missing = [name for name in self.expected_names() if name not in self.models]
        return "; ".join(f"{n}: {self.errors.get(n, 'loading')}" for n in missing) or "no models configured"

    def get(self, name: str) -> LoadedModel:
        try:
            return self.models[name]
        except KeyError:
            served = ", ".join(sorted(self.models)) or "none"
            raise ModelNotFound(f"no model named {name!r}; served models: {served}") from None
