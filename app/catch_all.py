"""The outermost layer of the app: a request id on every response, and JSON for every failure.

- `X-Request-ID`: the caller's (nginx sets one) when it is a short printable token, else a new one;
  echoed on every response and named in the log line and the body of a 500, so a user's report
  finds the traceback.
- An exception no handler took becomes a JSON 500 `{"error", "code": "internal_error",
  "request_id"}`, and its traceback is logged once, here (nothing is re-raised to the server,
  which would log it again).
- A client that goes away mid-upload is one log line at info, not a traceback: it is cheap to
  cause and says nothing about the service.
"""

from __future__ import annotations

import logging
import re
import uuid

from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.http_errors import error_response

logger = logging.getLogger("pixelserve.errors")
REQUEST_ID_HEADER = "X-Request-ID"
_HEADER_KEY = REQUEST_ID_HEADER.lower().encode()
_GOOD_ID = re.compile(rb"^[\x21-\x7e]{1,128}$")  # visible ASCII: safe in logs and headers


def request_id_of(scope: Scope) -> str:
    """The id this request is known by (set by CatchAll before anything else runs)."""
    return str(scope.get("state", {}).get("request_id", ""))


class CatchAll:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = next((value for key, value in scope["headers"] if key == _HEADER_KEY), b"")
        request_id = given.decode() if _GOOD_ID.fullmatch(given) else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id
        started = False

        async def send_with_id(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                message["headers"] = [*message.get("headers", []), (_HEADER_KEY, request_id.encode())]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except ClientDisconnect:
            logger.info(
                "%s %s: client disconnected before its request was read (request id %s)",
                scope["method"],
                scope["path"],
                request_id,
            )
        except Exception:
            logger.exception("%s %s failed (request id %s)", scope["method"], scope["path"], request_id)
            if not started:
                response = error_response(500, "internal_error", "internal server error", request_id=request_id)
                await response(scope, receive, send_with_id)
