"""POST /predict/{model}: uploaded images in, every class probability and the label out."""

from __future__ import annotations

import base64
import io
import time
from functools import partial
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from PIL import Image
from pydantic import BaseModel, Field, TypeAdapter, ValidationError
from starlette.routing import Route

from app.bodies import PredictionBody
from app.core import logs
from app.core.batching import Batcher
from app.core.errors import (
    BodyTooLarge,
    DeadlineExceeded,
    ImageTooLarge,
    InvalidImage,
    MalformedUpload,
    MissingUpload,
    ModelNotFound,
    NotReady,
    Overloaded,
    PixelserveError,
    TooManyImages,
    UnsupportedImage,
)
from app.core.inference import Prediction, prepare_uploads
from app.core.registry import ModelRegistry
from app.core.rollout import ROUTE_KEY_HEADER, ROUTE_KEY_PARAMETER
from app.core.settings import Settings
from app.core.shadow import record_answer
from app.core.upload_cost import is_heavy, open_uploads
from app.deadlines import CLIENT_GONE, answer_or_gone, deadline_of
from app.follow_up import follow_up, keeping, wants_inputs
from app.http_errors import responses
from app.multipart import boundary_of, iter_parts

router = APIRouter(prefix="/predict", tags=["predict"])

_REQUEST_BODY: dict[str, Any] = {
    "required": True,
    "content": {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "required": ["file"],
                "properties": {
                    "file": {
                        "oneOf": [
                            {"type": "string", "format": "binary"},
                            {"type": "array", "items": {"type": "string", "format": "binary"}},
                        ],
                        "description": "one image, or several `file` parts: a list of answers in order",
                    }
                },
            }
        },
        "image/*": {"schema": {"type": "string", "format": "binary"}},
        "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
    },
}


# The answers are plain dicts (Prediction.to_json) dumped by pydantic-core without validation: the
# route builds them itself, and validating them cost more than dumping (about 5 of 10 us per answer).
# They are what PredictionBody documents; tests/test_contracts.py checks real answers against it.
_ANSWER = TypeAdapter(dict[str, Any])
_ANSWERS = TypeAdapter(list[dict[str, Any]])
MAX_OTHER_FIELDS = 8  # form fields other than `file`, ignored but bounded


async def read_uploads(request: Request, max_images: int) -> list[bytes]:
    """The image bytes of each multipart `file` field, or of a raw image/* body."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "multipart/form-data":
        images, fields = [], 0
        for part in iter_parts(await request.body(), boundary_of(request.headers["content-type"])):
            if part.name == "file":
                images.append(part.data)
                if len(images) > max_images:
                    raise TooManyImages(f"more than {max_images} images in one request")
            elif (fields := fields + 1) > MAX_OTHER_FIELDS:
                raise MalformedUpload(f"more than {MAX_OTHER_FIELDS} form fields besides 'file'")
        if not images:
            raise MissingUpload("multipart field 'file' with an image is required")
    elif content_type.startswith("image/") or content_type == "application/octet-stream":
        images = [await request.body()]
    elif content_type == "" and not await request.body():
        raise MissingUpload("no image: send a multipart field 'file' or a raw image/* body")
    else:
        raise UnsupportedImage(f"content type {content_type!r} is not accepted; send multipart/form-data or image/*")
    for position, data in enumerate(images):
        if not data:
            where = f"file {position + 1} of {len(images)}" if len(images) > 1 else "the uploaded file"
            raise MissingUpload(f"{where} is empty")
    return images


class PredictQuery(BaseModel):
    """The query parameters of POST /predict/{name} (FastAPI's route and the plain endpoint both use it)."""

    top_k: int | None = Field(None, ge=1, le=1000, description="also list the k likeliest classes")
    include_input: bool = Field(
        False, description="also return what the model saw: each 28x28 input as a base64 PNG (`input_png`)"
    )


_NO_QUERY = PredictQuery()


def _place(count: int, position: int) -> str:
    return f"file {position + 1} of {count}" if count > 1 else ""


def input_png(pixels: np.ndarray) -> str:
    """One [28, 28] model input in [0, 1] as a base64 8-bit grey PNG (a few hundred bytes)."""
    buffer = io.BytesIO()
    Image.fromarray(np.round(np.clip(pixels, 0, 1) * 255).astype(np.uint8), mode="L").save(buffer, "PNG")
    return base64.b64encode(buffer.getvalue()).decode()


@router.post(
    "/{name}",
    response_model=PredictionBody | list[PredictionBody],
    openapi_extra={"requestBody": _REQUEST_BODY, "parameters": [ROUTE_KEY_PARAMETER]},
    responses=responses(
        ModelNotFound,
        NotReady,
        BodyTooLarge,
        ImageTooLarge,
        TooManyImages,
        UnsupportedImage,
        InvalidImage,
        MissingUpload,
        MalformedUpload,
        Overloaded,
        DeadlineExceeded,
    ),
)
async def predict(name: str, request: Request, query: Annotated[PredictQuery, Query()]) -> Response:
    """Classify images: multipart `file` fields, or one raw body with an image/* content type.

    One image answers one object; several `file` parts (at most PIXELSERVE_MAX_IMAGES_PER_REQUEST)
    answer a list in the order they were sent. Accepts PNG, JPEG, GIF, BMP, WebP and TIFF of any
    mode, up to PIXELSERVE_MAX_IMAGE_PIXELS each and PIXELSERVE_MAX_REQUEST_PIXELS together (as
    decoded: a large JPEG decodes scaled down), checked before decoding (413); the model's own
    recipe (digit or garment) turns each into the 28x28 input its dataset used. Concurrent requests
    share forward passes (adaptive batching); large images decode in a lane of their own.
    """
    return await classify(request, name, query)


async def predict_plain(request: Request) -> Response:
    """The same route as a plain Starlette endpoint, which create_app puts first in the app's routes.

    FastAPI walks its nested routers and solves the route's parameters on every request: about half
    of the Python calls a predict request made (1,472 -> 754, benchmarks/request_calls.py); the route
    needs none of it. The FastAPI route above stays for the OpenAPI document; both validate the query with
    PredictQuery, and errors go through the app's exception handlers alike."""
    request.scope["route"] = PLAIN_ROUTE  # what FastAPI's router records: the access line and metrics name it
    query = _NO_QUERY
    if request.scope["query_string"]:
        try:
            query = PredictQuery.model_validate(dict(request.query_params))
        except ValidationError as exc:
            raise RequestValidationError([{**e, "loc": ("query", *e["loc"])} for e in exc.errors()]) from None
    return await classify(request, request.path_params["name"], query)


PLAIN_ROUTE = Route("/predict/{name}", predict_plain, methods=["POST"])


async def classify(request: Request, name: str, query: PredictQuery) -> Response:
    top_k, include_input = query.top_k, query.include_input
    started = time.monotonic()
    # app.state read here, not through three dependencies: each one solved per request was about 1 %
    # of a loaded process's CPU (py-spy, c=32), for a lookup.
    state = request.app.state
    registry: ModelRegistry = state.registry
    settings: Settings = state.settings
    batcher: Batcher = state.batcher
    # The served version, or a canary's candidate (app/core/rollout.py); a routing key pins the choice.
    model, role, rollout = registry.route(name, request.headers.get(ROUTE_KEY_HEADER))
    request.state.model, request.state.version = model.name, model.version  # for the access line
    with batcher.receiving():
        images = await read_uploads(request, settings.max_images_per_request)
        request.state.images = len(images)
        # After the body, not before: refusing unread makes the server close the connection, and
        # reconnecting costs clients and the server more than reading the body did.
        batcher.admit(len(images), settings.overload)
        try:
            opened, pixels = open_uploads(images, settings, partial(_place, len(images)))
        except PixelserveError:
            batcher.refused(model)
            raise
        prepare = partial(prepare_uploads, opened, model.recipe, settings.max_image_pixels)
        # The inputs themselves (the batcher returns probabilities), for include_input, a shadow or a capture.
        kept: list[np.ndarray] = []
        if include_input or wants_inputs(state, model, rollout):
            prepare = partial(keeping, prepare, kept)
        deadline = deadline_of(settings, started)
        heavy = is_heavy(pixels, len(images), settings)
        answer = batcher.submit(model, prepare, len(images), heavy=heavy, deadline=deadline, started=started)
    try:
        rows = await answer_or_gone(request, batcher, answer, deadline)
    except Exception as exc:
        if rollout is not None and role == "candidate" and not isinstance(exc, PixelserveError):
            rollout.count("candidate_errors")  # the candidate failed, not the request
        raise
    if rows is None:
        return Response(status_code=CLIENT_GONE)  # nobody reads it; its work was dropped unrun
    record_answer(model, role, rollout, rows, started)
    background = follow_up(state, model, rollout, kept, rows, logs.request_id.get(), images)
    seen = [input_png(pixels) for pixels in kept[0]] if include_input else None
    bodies = [Prediction(model.name, model.version, model.labels, row).to_json(top_k) for row in rows]
    if seen is not None:
        for body, png in zip(bodies, seen, strict=True):
            body["input_png"] = png
    content = _ANSWER.dump_json(bodies[0]) if len(images) == 1 else _ANSWERS.dump_json(bodies)
    return Response(content, media_type="application/json", background=background)
