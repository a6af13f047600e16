"""The service's one exception tree, mapped to HTTP in one place (`install_error_handlers`).

Every error leaves as JSON: {"error": "<message>", "code": "<kind>"}.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import compile_path


class ErrorBody(BaseModel):
    """The body of every error response."""

    error: str
    code: str
    request_id: str | None = None  # on 500s: the X-Request-ID under which the traceback is logged


class PixelserveError(Exception):
    status_code = 500
    code = "internal_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ModelNotFound(PixelserveError):
    status_code = 404
    code = "model_not_found"


class UnsupportedImage(PixelserveError):
    status_code = 415
    code = "unsupported_media_type"


class InvalidImage(PixelserveError):
    """An image that decodes but has nothing to classify, or a missing/empty upload."""

    status_code = 422
    code = "invalid_image"


class MalformedUpload(PixelserveError):
    """A multipart body that cannot be parsed, or with more than one file."""

    status_code = 400
    code = "malformed_request"


class MissingUpload(PixelserveError):
    status_code = 422
    code = "missing_file"


class ImageTooLarge(PixelserveError):
    status_code = 413
    code = "image_too_large"


class TooManyImages(PixelserveError):
    """More images in one request than PIXELSERVE_MAX_IMAGES_PER_REQUEST."""

    status_code = 413
    code = "too_many_images"


class BodyTooLarge(PixelserveError):
    status_code = 413
    code = "body_too_large"


class Unauthorized(PixelserveError):
    """No `Authorization: Bearer <token>` header."""

    status_code = 401
    code = "unauthorized"


class Forbidden(PixelserveError):
    """Wrong admin token, or admin routes disabled (no PIXELSERVE_ADMIN_TOKEN)."""

    status_code = 403
    code = "forbidden"


class JobNotFound(PixelserveError):
    status_code = 404
    code = "job_not_found"


class VersionNotFound(PixelserveError):
    status_code = 404
    code = "version_not_found"


class Conflict(PixelserveError):
    """The resource is in a state that does not allow this (a finished job, a broken version)."""

    status_code = 409
    code = "conflict"


class NotReady(PixelserveError):
    status_code = 503
    code = "not_ready"


def error_response(
    status_code: int, code: str, message: str, headers: Mapping[str, str] | None = None, request_id: str | None = None
) -> JSONResponse:
    body = (
        {"error": message, "code": code}
        if request_id is None
        else {"error": message, "code": code, "request_id": request_id}
    )
    return JSONResponse(body, status_code=status_code, headers=headers)


def responses(*errors: type[PixelserveError]) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` entries for the errors a route can raise."""
    out: dict[int | str, dict[str, Any]] = {}
    for error in errors:
        entry = out.setdefault(error.status_code, {"model": ErrorBody, "description": ""})
        doc = (error.__doc__ or error.code.replace("_", " ")).strip().splitlines()[0]
        entry["description"] = f"{entry['description']}; {doc}" if entry["description"] else doc
    return out


def _allowed_methods(request: Request) -> list[str]:
    """Every method of every route whose path matches, from the OpenAPI document (cached by FastAPI)."""
    paths = request.app.openapi().get("paths", {})
    methods = {
        method.upper()
        for template, operations in paths.items()
        if compile_path(template)[0].match(request.url.path)
        for method in operations
    }
    return sorted(methods | ({"HEAD"} if "GET" in methods else set()))


def install_error_handlers(app: FastAPI) -> None:
    async def on_pixelserve_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, PixelserveError)
        return error_response(exc.status_code, exc.code, exc.message)

    async def on_validation_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        details = "; ".join(
            f"{'.'.join(str(p) for p in err.get('loc', ()))}: {err.get('msg', '')}" for err in exc.errors()
        )
        return error_response(422, "validation_error", details or "invalid request")

    async def on_http_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        if exc.status_code == 405:  # Starlette names only the first route of the path; RFC 9110 wants all
            exc.headers = {**(exc.headers or {}), "Allow": ", ".join(_allowed_methods(request))}
        # Starlette's headers are kept: a 405 carries `Allow` (RFC 9110), a 401 `WWW-Authenticate`.
        return error_response(exc.status_code, "http_error", str(exc.detail), headers=exc.headers)

    async def on_unauthorized(request: Request, exc: Exception) -> JSONResponse:
        response = await on_pixelserve_error(request, exc)
        response.headers["WWW-Authenticate"] = "Bearer"
        return response

    app.add_exception_handler(PixelserveError, on_pixelserve_error)
    app.add_exception_handler(Unauthorized, on_unauthorized)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(StarletteHTTPException, on_http_error)


class InvalidInferenceRequest(PixelserveError):
    """An inference request (Open Inference Protocol) whose JSON, tensors or binary data do not fit the model."""

    status_code = 400
    code = "invalid_inference_request"


class ProbeNotReady(PixelserveError):
    """Not ready, as the Open Inference Protocol's health probes say it: a 4xx status (Triton's 400)."""

    status_code = 400
    code = "not_ready"


class UnsupportedContentEncoding(PixelserveError):
    """A request body compressed other than gzip or deflate."""

    status_code = 415
    code = "unsupported_content_encoding"
