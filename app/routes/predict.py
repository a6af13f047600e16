"""POST /predict/{model}: one uploaded image in, every class probability and the label out."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.deps import ExecutorDep, RegistryDep, SettingsDep
from app.errors import (
    BodyTooLarge,
    ImageTooLarge,
    InvalidImage,
    MalformedUpload,
    MissingUpload,
    ModelNotFound,
    UnsupportedImage,
    responses,
)
from app.inference import classify
from app.schemas import PredictionBody

router = APIRouter(prefix="/predict", tags=["predict"])

_REQUEST_BODY: dict[str, Any] = {
    "required": True,
    "content": {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "required": ["file"],
                "properties": {"file": {"type": "string", "format": "binary"}},
            }
        },
        "image/*": {"schema": {"type": "string", "format": "binary"}},
        "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
    },
}


async def read_upload(request: Request) -> bytes:
    """The image bytes of a multipart `file` field or of a raw image/* body."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "multipart/form-data":
        try:
            form = await request.form(max_files=1, max_fields=8)
        except StarletteHTTPException as exc:  # Starlette's own parse errors: unify them with ours
            raise MalformedUpload(f"malformed multipart body: {exc.detail}") from None
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            raise MissingUpload("multipart field 'file' with an image is required")
        data = await upload.read()
    elif content_type.startswith("image/") or content_type == "application/octet-stream":
        data = await request.body()
    elif content_type == "" and not await request.body():
        raise MissingUpload("no image: send a multipart field 'file' or a raw image/* body")
    else:
        raise UnsupportedImage(f"content type {content_type!r} is not accepted; send multipart/form-data or image/*")
    if not data:
        raise MissingUpload("the uploaded file is empty")
    return data


@router.post(
    "/{name}",
    response_model=PredictionBody,
    openapi_extra={"requestBody": _REQUEST_BODY},
    responses=responses(
        ModelNotFound, BodyTooLarge, ImageTooLarge, UnsupportedImage, InvalidImage, MissingUpload, MalformedUpload
    ),
)
async def predict(
    name: str,
    request: Request,
    registry: RegistryDep,
    settings: SettingsDep,
    executor: ExecutorDep,
    top_k: Annotated[int | None, Query(ge=1, le=1000, description="also list the k likeliest classes")] = None,
) -> JSONResponse:
    """Classify one image: a multipart field `file`, or a raw body with an image/* content type.

    Accepts PNG, JPEG, GIF, BMP, WebP and TIFF of any size and mode; the model's own recipe
    (digit or garment) turns it into the 28x28 input its dataset used.
    """
    model = registry.get(name)
    data = await read_upload(request)
    loop = asyncio.get_running_loop()
    prediction = await loop.run_in_executor(executor, classify, model, data, settings.max_image_pixels)
    return JSONResponse(prediction.to_json(top_k))
