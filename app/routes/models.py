"""Read-only view of the model repository and of what this replica serves."""

from __future__ import annotations

from fastapi import APIRouter

from app.bodies import BatchingInfo, ModelDetail, ModelSummary, VersionDetail, VersionInfo
from app.core.artifacts import ArtifactError, public_metadata, read_metadata
from app.core.batch_work import BatchCounters
from app.core.errors import Conflict, ModelNotFound, VersionNotFound
from app.core.registry import ModelRegistry
from app.deps import BatcherDep, RegistryDep, SettingsDep
from app.http_errors import responses

router = APIRouter(prefix="/models", tags=["models"])


def _summary(registry: ModelRegistry, name: str) -> ModelSummary:
    loaded = registry.models.get(name)
    meta = loaded.metadata if loaded else {}
    return ModelSummary(
        name=name,
        served_version=loaded.version if loaded else None,
        versions=registry.repository.versions(name),
        labels=list(meta.get("labels", [])),
        architecture=meta.get("architecture"),
        dataset=meta.get("dataset"),
        preprocessing=meta.get("preprocessing"),
        test_accuracy=meta.get("test_accuracy"),
        created_at=meta.get("created_at"),
        error=registry.errors.get(name),
    )


def _version_info(registry: ModelRegistry, name: str, version: str) -> VersionInfo:
    try:
        meta = read_metadata(registry.repository.artifact_path(name, version))
    except ArtifactError as exc:
        return VersionInfo(version=version, error=str(exc))
    keys = ("architecture", "dataset", "test_accuracy", "created_at", "weights_sha256")
    return VersionInfo(version=version, **{key: meta.get(key) for key in keys})


@router.get("", response_model=list[ModelSummary])
def list_models(registry: RegistryDep) -> list[ModelSummary]:
    """Every model this replica serves or was asked to serve."""
    names = sorted(set(registry.expected_names()) | set(registry.models))
    return [_summary(registry, name) for name in names]


@router.get("/{name}", response_model=ModelDetail, responses=responses(ModelNotFound))
def get_model(name: str, registry: RegistryDep, batcher: BatcherDep, settings: SettingsDep) -> ModelDetail:
    """One model: its served version, full metadata (absolute paths cut to their last part), and every version."""
    if name not in registry.models and name not in registry.expected_names():
        registry.get(name)  # raises the 404 naming the served models
    summary = _summary(registry, name)
    loaded = registry.models.get(name)
    policy = batcher.policy(name)
    counters = batcher.counters.get(name, BatchCounters()).to_json()
    return ModelDetail(
        **summary.model_dump(),
        batching=BatchingInfo(max_batch_size=policy.max_batch_size, max_delay_ms=policy.max_delay_ms, **counters),
        version_details=[_version_info(registry, name, v) for v in summary.versions],
        pinned=bool(loaded) and registry.repository.read_pointer(name) == (summary.served_version, True),
        metadata=public_metadata(loaded.metadata) if loaded else {},
        rollout=registry.repository.read_rollout(name),
        capture=settings.capture.get(name),
    )


@router.get(
    "/{name}/versions/{version}",
    response_model=VersionDetail,
    responses=responses(ModelNotFound, VersionNotFound, Conflict),
)
def get_version(name: str, version: str, registry: RegistryDep) -> VersionDetail:
    """One version's full metadata (accuracy, confusion matrix, training history), served or not."""
    if name not in registry.models and name not in registry.expected_names():
        registry.get(name)  # raises the 404 naming the served models
    repository = registry.repository
    registry.require_listed(name, version)  # only what the repository lists: no '..', nothing outside it
    try:
        metadata = read_metadata(repository.artifact_path(name, version))
    except ArtifactError as exc:
        raise Conflict(f"version {version} of {name!r:.80} cannot be read: {exc}") from None
    current = repository.current_version(name)  # CURRENT, else the newest version
    pointed, pinned = repository.read_pointer(name)
    loaded = registry.models.get(name)
    return VersionDetail(
        model=name,
        version=version,
        current=current == version,
        pinned=pointed == version and pinned,
        served=loaded is not None and loaded.version == version,
        metadata=public_metadata(metadata),
    )
