"""Admin: captured predictions (PIXELSERVE_CAPTURE): list, view, label, delete, export as IDX."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from app.core.artifacts import ArtifactError, read_metadata
from app.core.captures_export import export_tar
from app.core.captures_store import Capture, CaptureStore
from app.core.errors import CaptureNotFound, Conflict, Forbidden, InvalidLabel, ModelNotFound, NotReady
from app.core.registry import ModelRegistry
from app.deps import RegistryDep
from app.http_errors import responses

router = APIRouter(prefix="/captures", tags=["admin: captures"])  # admin-only: see app/routes/__init__.py

MAX_ID = 2**63 - 1  # the largest id a query may name; the store answers "not found" past its own column


class CaptureView(BaseModel):
    id: int
    model: str
    version: str = Field(description="the model version that answered")
    request_id: str | None = Field(description="the X-Request-ID of the request it came with")
    created_at: dt.datetime
    prediction: str = Field(description="the label the model answered")
    confidence: float
    probabilities: list[float] = Field(description="every class, in the model's label order")
    label: str | None = Field(description="the label an admin set; null: not labelled")
    has_original: bool = Field(description="the upload as sent is kept too (the policy's keep_originals)")
    bytes: int = Field(description="bytes of its files on the captures volume")


class CaptureLabel(BaseModel):
    model_config = ConfigDict(extra="forbid")
    label: str = Field(min_length=1, max_length=100, description='one of the model\'s labels, e.g. "7"')


async def _capture_store(request: Request) -> CaptureStore:
    store: CaptureStore | None = request.app.state.capture_store
    if store is None:  # no admin token, which the router's guard refuses first
        raise Forbidden("admin routes are disabled: the server has no PIXELSERVE_ADMIN_TOKEN")
    return store


CaptureStoreDep = Annotated[CaptureStore, Depends(_capture_store)]


def view(capture: Capture) -> CaptureView:
    fields = {key: capture[key] for key in CaptureView.model_fields if key in capture}
    fields["created_at"] = dt.datetime.fromtimestamp(capture["created_at"], dt.UTC)
    return CaptureView(**fields, has_original=capture["original"] is not None)


def _found(store: CaptureStore, capture_id: int) -> Capture:
    capture = store.get(capture_id)
    if capture is None:
        raise CaptureNotFound(f"no capture {capture_id}")
    return capture


def _labels(registry: ModelRegistry, capture: Capture) -> list[str]:
    """The labels of the version that answered, else of the served version."""
    repository, name, version = registry.repository, capture["model"], capture["version"]
    if version in repository.versions(name):
        try:
            return list(read_metadata(repository.artifact_path(name, version))["labels"])
        except (ArtifactError, KeyError):
            pass
    loaded = registry.models.get(name)
    if loaded is None:
        raise Conflict(f"the labels of model {name!r} are unknown: version {version} is gone and none is served")
    return list(loaded.labels)


@router.get("", response_model=list[CaptureView])
def list_captures(
    store: CaptureStoreDep,
    model: Annotated[str | None, Query(max_length=100)] = None,
    version: Annotated[str | None, Query(max_length=20)] = None,
    label: Annotated[str | None, Query(max_length=100, description="the admin's label")] = None,
    min_confidence: Annotated[float | None, Query(ge=0, le=1)] = None,
    max_confidence: Annotated[float | None, Query(ge=0, le=1)] = None,
    labelled: bool | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    before: Annotated[int | None, Query(ge=1, le=MAX_ID, description="only ids below this: the next page")] = None,
) -> list[CaptureView]:
    """Captures matching every filter given, newest first; page with `before` = the last id seen."""
    if before is not None:
        before = min(before, store.jobs.max_id)  # ids past the column's integer: none is above them
    found = store.search(model, version, label, min_confidence, max_confidence, labelled, limit, before)
    return [view(capture) for capture in found]


@router.get(
    "/export",
    response_class=Response,
    responses={
        200: {"content": {"application/x-tar": {}}, "description": "IDX images and labels, and captures.json"},
        **responses(ModelNotFound, CaptureNotFound, NotReady),
    },
)
def export_captures(model: Annotated[str, Query(max_length=100)], store: CaptureStoreDep, registry: RegistryDep) -> Any:
    """The model's labelled captures as IDX files (the training sets' format) in a tar, with the
    capture ids and label names in captures.json; label indices follow the served version's labels."""
    labels = registry.get(model).labels  # 404 for a model this replica does not serve
    tar, count = export_tar(store, model, labels)
    if count == 0:
        raise CaptureNotFound(f"model {model!r} has no labelled captures")
    disposition = f'attachment; filename="{model}-captures.tar"'
    return Response(tar, media_type="application/x-tar", headers={"Content-Disposition": disposition})


@router.get("/{capture_id:int}", response_model=CaptureView, responses=responses(CaptureNotFound))
def get_capture(capture_id: int, store: CaptureStoreDep) -> CaptureView:
    """One capture's metadata."""
    return view(_found(store, capture_id))


@router.get(
    "/{capture_id:int}/image",
    response_class=Response,
    responses={
        200: {"content": {"image/png": {}}, "description": "the 28x28 model input"},
        **responses(CaptureNotFound),
    },
)
def get_capture_image(capture_id: int, store: CaptureStoreDep) -> Any:
    """The 28x28 input the model saw, as an 8-bit grey PNG."""
    capture = _found(store, capture_id)
    try:
        png = store.png(capture)
    except (OSError, ValueError):
        raise CaptureNotFound(f"capture {capture_id}'s image is gone") from None
    return Response(png, media_type="image/png")


@router.put(
    "/{capture_id:int}/label",
    response_model=CaptureView,
    responses=responses(CaptureNotFound, InvalidLabel, Conflict),
)
def set_capture_label(
    capture_id: int, body: Annotated[CaptureLabel, Body()], store: CaptureStoreDep, registry: RegistryDep
) -> CaptureView:
    """Set or correct a capture's label: one of its model's labels (422 otherwise)."""
    capture = _found(store, capture_id)
    labels = _labels(registry, capture)
    if body.label not in labels:
        raise InvalidLabel(f"{body.label!r:.100} is not a label of {capture['model']!r}; labels: {', '.join(labels)}")
    updated = store.set_label(capture_id, body.label)
    if updated is None:  # deleted meanwhile
        raise CaptureNotFound(f"no capture {capture_id}")
    return view(updated)


@router.delete("/{capture_id:int}", status_code=204, response_class=Response, responses=responses(CaptureNotFound))
def delete_capture(capture_id: int, store: CaptureStoreDep) -> Response:
    """Delete a capture: its index row and its files."""
    if not store.delete(capture_id):
        raise CaptureNotFound(f"no capture {capture_id}")
    return Response(status_code=204)
