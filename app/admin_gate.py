"""Admin routes are authenticated before a byte of their body is read, and their bodies are small.

FastAPI reads and parses a route's JSON body before it runs the route's dependencies, so a guard
written as a dependency alone lets anyone make the server parse a body: a 9 MB JSON array took
0.25 s of the event loop, and malformed JSON got 400/422 instead of 401. This ASGI layer matches
the admin routes' paths (taken from the routers themselves), answers 401/403 from the headers
alone, then reads at most ADMIN_MAX_BODY_BYTES (413 past that, declared or streamed) and hands the
buffered body on. The router-level `require_admin` dependency stays, for the OpenAPI document and
as a second lock.
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
    def __init__(self, app: ASGIApp, settings: Settings, admin_routes: Iterable[BaseRoute]) -> None:
        self.app = app
        self.settings = settings
        self.paths: list[re.Pattern[str]] = [route.path_regex for route in admin_routes if isinstance(route, Route)]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not any(path.match(scope["path"]) for path in self.paths):
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        authorization = headers.get(b"authorization", b"").decode("latin-1") or None
        if (refusal := admin_refusal(self.settings, authorization)) is not None:
            await _refuse(refusal)(scope, receive, send)
            return
        too_large = BodyTooLarge(f"admin request bodies are limited to {ADMIN_MAX_BODY_BYTES} bytes")
        declared = headers.get(b"content-length", b"0")
        if not declared.isdigit() or len(declared) > 18 or int(declared) > ADMIN_MAX_BODY_BYTES:
            await _refuse(too_large)(scope, receive, send)
            return
        body, more = bytearray(), True
        while more:
            message = await receive()
            if message["type"] != "http.request":  # the client left: nothing to answer
                return
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > ADMIN_MAX_BODY_BYTES:
                await _refuse(too_large)(scope, receive, send)
                return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": bytes(body), "more_body": False}
            return await receive()  # after the body: a disconnect, as the server reports it

        await self.app(scope, replay, send)
