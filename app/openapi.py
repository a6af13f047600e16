"""The OpenAPI document, corrected to say what the service really answers.

FastAPI derives the document from the routes, and misses what happens around them:
- its 422 is `HTTPValidationError` ({"detail": [...]}), while app.http_errors answers every validation
  error as ErrorBody ({"error", "code"});
- a route whose JSON body FastAPI parses answers 400 for a body that is not JSON at all (not
  UTF-8, nested past the parser's depth): FastAPI raises that before any handler of ours runs;
- every request body is bounded (app.limits, app.admin_gate for admin routes; run by app.edge): 413;
- the admin routes take a Bearer token, documented as a security scheme (what clients and
  fuzzers understand) rather than as the optional `authorization` header parameter the guard's
  signature shows.
tests/test_openapi_fuzz.py fuzzes a real server against this document.
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import FastAPI

from app.http_errors import ErrorBody

ERROR_SCHEMA = {"$ref": "#/components/schemas/ErrorBody"}
ADMIN_SCHEME = "adminToken"
_METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")


def _error(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": ERROR_SCHEMA}}}


def _add(responses: dict[str, Any], status: str, description: str) -> None:
    """Document `status` as an ErrorBody; one the route already documents gains the reason."""
    entry = responses.setdefault(status, _error(description))
    if description not in entry.get("description", ""):
        entry["description"] = f"{entry['description']}; {description}" if entry.get("description") else description


def _correct_operation(operation: dict[str, Any]) -> None:
    responses: dict[str, Any] = operation.setdefault("responses", {})
    if "422" in responses:
        entry = responses["422"]
        entry["content"] = {"application/json": {"schema": ERROR_SCHEMA}}
        if entry.get("description") == "Validation Error":
            entry["description"] = "a parameter or the body does not fit its schema (code `validation_error`)"
    content = operation.get("requestBody", {}).get("content", {})
    if content:
        _add(responses, "413", "the request body is larger than the limit (code `body_too_large`)")
    if "application/json" in content:
        _add(responses, "400", "the body cannot be parsed as JSON (not UTF-8, or nested too deeply)")
    if any(tag.startswith("admin") for tag in operation.get("tags", [])):
        # The token travels in Authorization; OpenAPI ignores a header parameter of that name.
        parameters = [p for p in operation.get("parameters", []) if p.get("name", "").lower() != "authorization"]
        if parameters:
            operation["parameters"] = parameters
        else:
            operation.pop("parameters", None)
        operation["security"] = [{ADMIN_SCHEME: []}]


def correct(document: dict[str, Any]) -> dict[str, Any]:
    """The document FastAPI generated, corrected in place (see the module docstring)."""
    for path_item in document.get("paths", {}).values():
        for method in _METHODS:
            if method in path_item:
                _correct_operation(path_item[method])
    components = document.setdefault("components", {})
    schemas: dict[str, Any] = components.setdefault("schemas", {})
    schemas.setdefault("ErrorBody", ErrorBody.model_json_schema())
    for name in ("HTTPValidationError", "ValidationError"):  # FastAPI's 422 bodies, which nothing sends
        dropped = schemas.pop(name, None)
        if dropped is not None and f'"#/components/schemas/{name}"' in json.dumps(document):
            schemas[name] = dropped  # still referred to somewhere: the document must stay valid
    components.setdefault("securitySchemes", {})[ADMIN_SCHEME] = {
        "type": "http",
        "scheme": "bearer",
        "description": "PIXELSERVE_ADMIN_TOKEN; the admin routes answer 403 when the server has none",
    }
    return document


def install_openapi(app: FastAPI) -> None:
    """Serve the corrected document at /openapi.json (built once, on the first request)."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = correct(FastAPI.openapi(app))
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
