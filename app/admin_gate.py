"""Admin routes are authenticated before a byte of their body is read, and their bodies are small.

FastAPI reads and parses a route's JSON body before it runs the route's dependencies, so a guard
written as a dependency alone lets anyone make the server parse a body: a 9 MB JSON array took
0.25 s of the event loop, and malformed JSON got 400/422 instead of 401. The edge layer
(app/edge.py) matches the admin routes' paths (taken from the routers themselves) and calls
`gate`: 401/403 from the headers alone, then at most ADMIN_MAX_BODY_BYTES read (413 past that,
declared or streamed) and the buffered body handed on. The router-level `require_admin`
dependency stays, for the OpenAPI document and as a second lock.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterable

from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.core.errors import BodyTooLarge, Forbidden, PixelserveError, Unauthorized
from app.core.settings import Settings
from app.http_errors import error_response

ADMIN_MAX_BODY_BYTES = 64 * 1024  # a training request or an activation is a few hundred bytes


def admin_refusal(settings: Settings, authorization: str | None) -> PixelserveError | None:
    """Why this Authorization header may not use the admin routes; None when it may."""
    if settings.admin_token is None:
        return Forbidden("admin routes are disabled: the server has no PIXELSERVE_ADMIN_TOKEN")
    if not authorization:
        return Unauthorized("admin route: send 'Authorization: Bearer <token>'")
    scheme, _, token = authorization.partition(" ")
    expected = settings.admin_token.get_secret_value().encode()
    if scheme.lower() != "bearer" or not secrets.compare_digest(token.strip().encode(errors="replace"), expected):
        return Forbidden("wrong admin token")
    return None


def _refuse(error: PixelserveError) -> ASGIApp:
    headers = {"WWW-Authenticate": "Bearer"} if isinstance(error, Unauthorized) else None
    return error_response(error.status_code, error.code, error.message, headers=headers)


class AdminGate:
    def __init__(self, settings: Settings, admin_routes: Iterable[BaseRoute]) -> None:
        self.settings = settings
        self.paths: list[re.Pattern[str]] = [route.path_regex for route in admin_routes if isinstance(route, Route)]

    def guards(self, path: str) -> bool:
        return any(pattern.match(path) for pattern in self.paths)

    async def gate(
        self, scope: Scope, receive: Receive, send: Send, authorization: bytes, declared: bytes | None
    ) -> Receive | None:
        """The body, buffered and replayed, once the caller may use it; None when refused (answered) or gone."""
        if (refusal := admin_refusal(self.settings, authorization.decode("latin-1") or None)) is not None:
            await _refuse(refusal)(scope, receive, send)
            return None
        too_large = BodyTooLarge(f"admin request bodies are limited to {ADMIN_MAX_BODY_BYTES} bytes")
        declared = b"0" if declared is None else declared
        if not declared.isdigit() or len(declared) > 18 or int(declared) > ADMIN_MAX_BODY_BYTES:
            await _refuse(too_large)(scope, receive, send)
            return None
        body, more = bytearray(), True
        while more:
            message = await receive()
            if message["type"] != "http.request":  # the client left: nothing to answer
                return None
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > ADMIN_MAX_BODY_BYTES:
                await _refuse(too_large)(scope, receive, send)
                return None
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": bytes(body), "more_body": False}
            return await receive()  # after the body: a disconnect, as the server reports it

        return replay
