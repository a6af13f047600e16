"""The exception tree (app.core.errors) mapped to HTTP in one place: handlers and OpenAPI entries.

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
from starlette.routing import Match, compile_path

from app.core.errors import Overloaded, PixelserveError, Unauthorized


class ErrorBody(BaseModel):
    """The body of every error response."""

    error: str
    code: str
    request_id: str | None = None  # on 500s: the X-Request-ID under which the traceback is logged


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
        if issubclass(error, Overloaded):
            entry["headers"] = {
                "Retry-After": {"description": "seconds to wait before retrying", "schema": {"type": "integer"}}
            }
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
    # ...that a route takes: its own pattern knows convertors (`/captures/{id:int}` is not `/captures/export`).
    methods = {method for method in methods if _routed(request, method)}
    return sorted(methods | ({"HEAD"} if "GET" in methods else set()))


def _routed(request: Request, method: str) -> bool:
    scope = {**request.scope, "method": method}
    return any(route.matches(scope)[0] == Match.FULL for route in request.app.router.routes)


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

    async def on_overloaded(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, Overloaded)
        response = await on_pixelserve_error(request, exc)
        response.headers["Retry-After"] = str(exc.retry_after_s)  # RFC 9110: delay-seconds, an integer
        return response

    app.add_exception_handler(PixelserveError, on_pixelserve_error)
    app.add_exception_handler(Unauthorized, on_unauthorized)
    app.add_exception_handler(Overloaded, on_overloaded)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(StarletteHTTPException, on_http_error)
