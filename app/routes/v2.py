"""The Open Inference Protocol v2 over REST (KServe, Triton): health, metadata and inference under /v2.

Stock clients (tritonclient.http, KServe's) work unchanged, binary tensor data included. Inference
goes through the same batcher as /predict. Only the served version of a model can be named in a
URL; another version is a 404 naming the served one. The protocol itself is in app/oip.
"""

from __future__ import annotations

import time
from functools import partial
from typing import Any

import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from app.core import logs
from app.core.artifacts import LoadedModel
from app.core.batching import Batcher
from app.core.errors import (
    BodyTooLarge,
    DeadlineExceeded,
    ImageTooLarge,
    InvalidImage,
    InvalidInferenceRequest,
    ModelNotFound,
    NotReady,
    Overloaded,
    PixelserveError,
    ProbeNotReady,
    TooManyImages,
    UnsupportedContentEncoding,
    UnsupportedImage,
    VersionNotFound,
)
from app.core.registry import ModelRegistry
from app.core.rollout import ROUTE_KEY_HEADER, ROUTE_KEY_PARAMETER, ActiveRollout, Role
from app.core.settings import Settings
from app.core.shadow import record_answer
from app.deadlines import CLIENT_GONE, answer_or_gone, deadline_of
from app.deps import BatcherDep, DrainerDep, RegistryDep, SettingsDep
from app.follow_up import follow_up, keeping, wants_inputs
from app.http_errors import responses
from app.oip.bodies import (
    InferenceRequest,
    InferenceResponse,
    ModelMetadata,
    ModelReady,
    ServerLive,
    ServerMetadata,
    ServerReady,
    inline_schema,
)
from app.oip.codec import HEADER_LENGTH, INLINE_JSON_BYTES, read_request
from app.oip.metadata import EXTENSIONS, SERVER_NAME, model_metadata
from app.oip.pixels import plan
from app.oip.response import build_response

router = APIRouter(prefix="/v2", tags=["open inference protocol v2"])

_INFER_REQUEST: dict[str, Any] = {
    "required": True,
    "content": {
        "application/json": {"schema": inline_schema(InferenceRequest)},
        "application/octet-stream": {
            "schema": {"type": "string", "format": "binary"},
            "description": f"the JSON request, then binary tensor data; {HEADER_LENGTH}: the JSON's length",
        },
    },
}
_INFER_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "model": InferenceResponse,
        "description": f"JSON; or, when an output is binary, application/octet-stream: the JSON ({HEADER_LENGTH} "
        "bytes), then each binary output's data",
        "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
    },
    **responses(
        InvalidInferenceRequest,
        ModelNotFound,
        NotReady,
        VersionNotFound,
        BodyTooLarge,
        TooManyImages,
        ImageTooLarge,
        UnsupportedImage,
        UnsupportedContentEncoding,
        InvalidImage,
        Overloaded,
        DeadlineExceeded,
    ),
}


def _served(registry: ModelRegistry, name: str, version: str | None) -> LoadedModel:
    model = registry.get(name)
    if version is not None and version != model.version:
        raise VersionNotFound(
            f"model {name!r} version {version!r} is not served; the served version is {model.version}"
        )
    return model


def _model_ready(registry: ModelRegistry, name: str, version: str | None) -> ModelReady:
    if name not in registry.models and name in registry.expected_names():
        raise ProbeNotReady(f"model {name!r} is not ready: {registry.errors.get(name, 'loading')}")
    _served(registry, name, version)
    return ModelReady(name=name, ready=True)


@router.get("", response_model=ServerMetadata)
async def server_metadata(request: Request) -> ServerMetadata:
    """The server's name, version and protocol extensions."""
    return ServerMetadata(name=SERVER_NAME, version=request.app.version, extensions=EXTENSIONS)


@router.get("/health/live", response_model=ServerLive)
async def server_live() -> ServerLive:
    """200 while the process runs."""
    return ServerLive(live=True)


@router.get("/health/ready", response_model=ServerReady, responses=responses(ProbeNotReady))
async def server_ready(registry: RegistryDep, drainer: DrainerDep) -> ServerReady:
    """200 once every configured model is loaded; else, and while draining, 400 (the protocol's 4xx, as Triton)."""
    if drainer.draining.is_set():
        raise ProbeNotReady("draining: shutting down after SIGTERM")
    if (reason := registry.not_ready_reason()) is not None:
        raise ProbeNotReady(f"not ready: {reason}")
    return ServerReady(ready=True)


@router.get("/models/{name}", response_model=ModelMetadata, responses=responses(ModelNotFound, NotReady))
async def get_model_metadata(name: str, registry: RegistryDep, settings: SettingsDep) -> ModelMetadata:
    """The served version's inputs (FP32, UINT8 or BYTES images; see the input's parameters) and outputs."""
    return model_metadata(_served(registry, name, None), settings.max_images_per_request)


@router.get(
    "/models/{name}/versions/{version}",
    response_model=ModelMetadata,
    responses=responses(ModelNotFound, NotReady, VersionNotFound),
)
async def get_version_metadata(name: str, version: str, registry: RegistryDep, settings: SettingsDep) -> ModelMetadata:
    """As GET /v2/models/{name}, for the served version only."""
    return model_metadata(_served(registry, name, version), settings.max_images_per_request)


@router.get("/models/{name}/ready", response_model=ModelReady, responses=responses(ProbeNotReady, ModelNotFound))
async def model_ready(name: str, registry: RegistryDep) -> ModelReady:
    """200 when the model is loaded; 400 when it is configured but not (yet) loaded; 404 when unknown."""
    return _model_ready(registry, name, None)


@router.get(
    "/models/{name}/versions/{version}/ready",
    response_model=ModelReady,
    responses=responses(ProbeNotReady, ModelNotFound, VersionNotFound),
)
async def version_ready(name: str, version: str, registry: RegistryDep) -> ModelReady:
    """As GET /v2/models/{name}/ready; a version other than the served one is a 404."""
    return _model_ready(registry, name, version)


async def _infer(
    model: LoadedModel,
    request: Request,
    settings: Settings,
    batcher: Batcher,
    role: Role = "served",
    rollout: ActiveRollout | None = None,
) -> Response:
    started = time.monotonic()
    request.state.model, request.state.version = model.name, model.version  # for the access line
    with batcher.receiving():
        body = await request.body()
        parsed = await read_request(
            body,
            request.headers.get(HEADER_LENGTH),
            request.headers.get("content-encoding"),
            settings.max_body_bytes,
            settings.max_images_per_request,
        )
        tensor = parsed.input
        request.state.images = tensor.images
        # After the body, not before: refusing unread closes the connection (see routes/predict.py).
        batcher.admit(tensor.images, settings.overload)
        # Base64 files in a large JSON body take milliseconds to decode: not on the event loop.
        inline = tensor.raw is not None or len(body) <= INLINE_JSON_BYTES
        planned = partial(plan, tensor, model.recipe, settings)
        try:
            prepare, heavy = planned() if inline else await run_in_threadpool(planned)
        except PixelserveError:
            batcher.refused(model)
            raise
        kept: list[np.ndarray] = []  # the inputs, for a shadow run or a capture (app/follow_up.py)
        if wants_inputs(request.app.state, model, rollout):
            prepare = partial(keeping, prepare, kept)
        deadline = deadline_of(settings, started, parsed.timeout_s)
        answer = batcher.submit(model, prepare, tensor.images, heavy=heavy, deadline=deadline, started=started)
    if (rows := await answer_or_gone(request, batcher, answer, deadline)) is None:
        return Response(status_code=CLIENT_GONE)  # nobody reads it; its work was dropped unrun
    record_answer(model, role, rollout, rows, started)
    response = build_response(model, parsed, rows)
    response.background = follow_up(request.app.state, model, rollout, kept, rows, logs.request_id.get())
    return response


@router.post(
    "/models/{name}/infer",
    openapi_extra={"requestBody": _INFER_REQUEST, "parameters": [ROUTE_KEY_PARAMETER]},
    responses=_INFER_RESPONSES,
)
async def infer(
    name: str, request: Request, registry: RegistryDep, settings: SettingsDep, batcher: BatcherDep
) -> Response:
    """Classify a batch of images, given as one input tensor.

    The input's datatype says how the images come: FP32 [N, 1, 28, 28] (or [N, 28, 28]) RAW pixels
    in [0, 1], light on dark as in the dataset and NOT normalised (the model normalises itself);
    UINT8 [N, 28, 28] pixels 0..255; or BYTES [N] encoded image files (base64 strings as JSON),
    preprocessed like POST /predict uploads. Outputs: `probabilities` FP32 [N, C] and `label`
    BYTES [N], as JSON or binary data (`binary_data`, `binary_data_output`); `classification: k`
    on `probabilities` gives the top k as "<value>:<index>:<label>".
    """
    # The served version, or a canary's candidate (app/core/rollout.py); a routing key pins the choice.
    model, role, rollout = registry.route(name, request.headers.get(ROUTE_KEY_HEADER))
    return await _infer(model, request, settings, batcher, role, rollout)


@router.post(
    "/models/{name}/versions/{version}/infer", openapi_extra={"requestBody": _INFER_REQUEST}, responses=_INFER_RESPONSES
)
async def infer_version(
    name: str, version: str, request: Request, registry: RegistryDep, settings: SettingsDep, batcher: BatcherDep
) -> Response:
    """As POST /v2/models/{name}/infer, for the served version only."""
    return await _infer(_served(registry, name, version), request, settings, batcher)
