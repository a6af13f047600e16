"""The models this process serves: loaded at start-up, hot-swapped when the repository moves on.

A swap replaces one dict entry, so a request that already holds the old model finishes with it
and names its version; the next request gets the new one. A version that fails to load, its
SHA-256 check or its smoke prediction is refused: the old one keeps serving and the refusal is
kept in `errors` (shown by GET /models/{name}) until a later version loads. Any failure while
loading one version (an unreadable file, a loader's exception) is that version's refusal only:
start-up and the other models go on. The name a model is served under is its folder's name, whatever
its metadata says; a model whose folder is removed from the repository stops being served.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from dataclasses import dataclass, field

from app.core import metrics
from app.core.artifacts import ONNX, LoadedModel, load_model, refusal_reason
from app.core.devices import Device
from app.core.errors import Conflict, ModelNotFound, NotReady, VersionNotFound
from app.core.onnx_runtime import ONNXRUNTIME, served_by_onnxruntime
from app.core.optimize import optimized
from app.core.repository import ModelRepository
from app.core.rollout import ActiveRollout, Role, StoredRollout

logger = logging.getLogger("pixelserve.registry")


@dataclass
class ModelRegistry:
    repository: ModelRepository
    device: Device
    wanted: list[str] | None = None  # None: every model in the repository
    optimize: bool = True  # freeze + optimize_for_inference on CPU (app/core/optimize.py)
    runtime: str = "torchscript"  # or onnxruntime: model.onnx where it agrees (app/core/onnx_runtime.py)
    models: dict[str, LoadedModel] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)  # name -> why it (or its newest version) is not served
    refused: set[tuple[str, str]] = field(default_factory=set)  # (name, version) not to retry
    rollouts: dict[str, ActiveRollout] = field(default_factory=dict)  # name -> canary/shadow applied here
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    # The configured names as of the last refresh: get() answers from memory, so a request for an
    # unknown name (cheap to send) never costs a directory listing.
    _configured: frozenset[str] = field(default_factory=frozenset, repr=False)

    def expected_names(self) -> list[str]:
        return list(self.wanted) if self.wanted is not None else self.repository.model_names()

    def refresh(self) -> list[str]:
        """Load every model whose current version differs from the served one; returns what changed."""
        with self._lock:
            return self._refresh()

    def _refresh(self) -> list[str]:
        changed = []
        names = self.expected_names()
        self._configured = frozenset(names)
        if self.wanted is None:  # models served until now whose folder has gone are looked at too
            names = sorted(set(names) | set(self.models))
        for name in names:
            try:
                if self._refresh_one(name):
                    changed.append(name)
                self._refresh_rollout(name)
            except Exception as exc:  # a flaky volume or a surprising file: this model only
                self.errors[name] = f"could not be refreshed: {type(exc).__name__}"
                metrics.reload_failed(name)
                logger.exception("model %s: refresh failed; keeping what is served", name)
        return changed

    def _refresh_one(self, name: str) -> bool:
        served = self.models.get(name)
        if self.repository.root.is_dir() and not self.repository.has_model_folder(name):
            if served is not None:  # removed on purpose: an unreadable root (a flaky volume) unloads nothing
                del self.models[name]
                metrics.model_unloaded(name)
                logger.warning("model %s: its folder was removed from the repository; no longer served", name)
            self.errors[name] = f"no version of {name!r}: no such folder in the model repository"
            return served is not None
        version = self.repository.current_version(name)
        if version is None:
            if served is None:
                self.errors[name] = f"no version of {name!r} in the model repository"
            return False
        if served is not None and served.version == version:
            return False
        # The current version; with nothing served yet (start-up), older versions as a fallback, so a
        # broken newest version does not leave the model unserved (hot reload keeps the old one alike).
        candidates = [version]
        if served is None:
            candidates += [v for v in reversed(self.repository.versions(name)) if int(v) < int(version)]
        return any(self._load(name, candidate, served, candidate == version) for candidate in candidates)

    def _load(self, name: str, version: str, served: LoadedModel | None, current: bool) -> bool:
        if (name, version) in self.refused:
            return False
        try:
            self.models[name] = self.load_version(name, version)
        except Exception as exc:  # ArtifactError or anything a loader raises: this version is refused
            self.refused.add((name, version))
            metrics.model_refused(name, version)
            reason = refusal_reason(exc)
            if current:
                self.errors[name] = f"version {version} refused: {reason}"
            still = f"still serving {served.version}" if served else "nothing served"
            logger.error("model %s version %s refused, %s: %s (%r)", name, version, still, reason, exc.__cause__ or exc)
            return False
        metrics.model_loaded(name, version)
        if current:
            self.errors.pop(name, None)
        logger.info("model %s version %s loaded%s", name, version, f" (was {served.version})" if served else "")
        return True

    def _refresh_rollout(self, name: str) -> None:
        """Apply the model's ROLLOUT when it changed: a new policy id loads the versions it names."""
        policy = self.repository.read_rollout(name) if name in self.models else None
        active = self.rollouts.get(name)
        if policy is None:
            if active is not None:
                del self.rollouts[name]
                logger.info("model %s: rollout %s ended", name, active.policy.id)
            return
        if active is None or active.policy.id != policy.id:
            self.rollouts[name] = self._apply_rollout(name, policy)

    def _apply_rollout(self, name: str, policy: StoredRollout) -> ActiveRollout:
        served = self.models[name]
        loaded: dict[str, LoadedModel] = {served.version: served}
        refused = []
        for version in filter(None, (policy.candidate, policy.shadow)):
            if version in loaded:
                continue
            try:  # a version that cannot serve is not applied; the served version goes on alone
                loaded[version] = self.load_version(name, version)
            except Exception as exc:
                reason = refusal_reason(exc)
                refused.append(f"version {version} refused: {reason}")
                logger.error("model %s: rollout version %s refused: %s", name, version, reason)
        rollout = ActiveRollout(
            policy,
            candidate=loaded.get(policy.candidate or ""),
            shadow=loaded.get(policy.shadow or ""),
            error="; ".join(refused) or None,
        )
        logger.info("model %s: rollout %s applied: %s", name, policy.id, policy.model_dump(exclude={"id"}))
        return rollout

    def route(self, name: str, key: str | None = None) -> tuple[LoadedModel, Role, ActiveRollout | None]:
        """The version that answers a request for `name` (the served one, or a canary's candidate), its role
        and the rollout that chose it; `key`: the request's routing key, if it sent one."""
        served = self.get(name)
        rollout = self.rollouts.get(name)
        if rollout is None:
            return served, "served", None
        model, role = rollout.choose(served, key)
        return model, role, rollout

    def require_listed(self, name: str, version: str) -> None:
        """VersionNotFound unless the repository lists `version` of `name` (only valid names and ASCII-digit
        versions are ever listed: no '..', no dot-folders, nothing outside the repository)."""
        known = self.repository.versions(name)
        if version not in known:
            listed = ", ".join(known) or "none"
            raise VersionNotFound(f"model {name!r:.80} has no version {version!r:.40}; versions: {listed}")

    def require_servable(self, name: str, version: str) -> None:
        """As require_listed, then Conflict unless the version loads and passes what serving it would check."""
        self.require_listed(name, version)
        try:
            self.load_version(name, version)
        except Exception as exc:  # ArtifactError, or whatever a loader raised: this version cannot serve
            raise Conflict(f"version {version} cannot be served: {refusal_reason(exc)}") from None

    def load_version(self, name: str, version: str) -> LoadedModel:
        """One version loaded, checked and prepared for serving (runtime, optimisation), not served yet.

        Raises ArtifactError or whatever a loader raises; the caller decides what a refusal means."""
        loaded = load_model(self.repository.artifact_path(name, version), self.device)
        loaded = dataclasses.replace(loaded, name=name)  # served under its folder's name
        # ONNX Runtime is checked against the loaded torch model; without it, the torch model is served.
        # Without torch, load_model gave model.onnx, checked on its own, already.
        onnx = served_by_onnxruntime(loaded) if self.runtime == ONNXRUNTIME and loaded.format != ONNX else None
        return onnx or (optimized(loaded) if self.optimize else loaded)

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
        """The served model; 503 for one that is configured but not loaded (with why), 404 for any other name."""
        model = self.models.get(name)
        if model is not None:
            return model
        if name in self._configured:
            raise NotReady(f"model {name!r} is not ready: {self.errors.get(name, 'loading')}")
        served = ", ".join(sorted(self.models)) or "none"
        raise ModelNotFound(f"no model named {name!r:.80}; served models: {served}")
