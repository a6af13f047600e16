"""The outermost layer of the app: a request id, an access line, and JSON for every failure.

- `X-Request-ID`: the caller's (nginx sets one) when it is a short printable token, else a new one;
  echoed on every response and named in the log line and the body of a 500, so a user's report
  finds the traceback.
- An exception no handler took becomes a JSON 500 `{"error", "code": "internal_error",
  "request_id"}`, and its traceback is logged once, here (nothing is re-raised to the server,
  which would log it again).
- One access line per request (logger `pixelserve.access`, PIXELSERVE_ACCESS_LOG): method, route
  template, status, latency, client, and the model, version and image count a route names in
  `request.state`; the request id is on it and on every other line logged meanwhile (app.core.logs).
- A client that goes away mid-upload is one log line at info, not a traceback: it is cheap to
  cause and says nothing about the service.
"""

from __future__ import annotations

import itertools
import logging
import os
import re
import time

from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.core import logs
from app.http_errors import error_response

logger = logging.getLogger("pixelserve.errors")
access_logger = logging.getLogger("pixelserve.access")
# What routes may add to their access line through request.state (see app/routes/predict.py).
ACCESS_FIELDS = ("model", "version", "images")
REQUEST_ID_HEADER = "X-Request-ID"
_HEADER_KEY = REQUEST_ID_HEADER.lower().encode()
_GOOD_ID = re.compile(rb"^[\x21-\x7e]{1,128}$")  # visible ASCII: safe in logs and headers
# Ids made here: a random prefix per process and a counter, unique across replicas and restarts
# without a uuid4 per request (py-spy: uuid4 was 7 % of a worker's samples at c=32).
_ID_PREFIX = f"{os.urandom(5).hex()}{os.getpid():x}-"
_ID_COUNTER = itertools.count(1)


def request_id_of(scope: Scope) -> str:
    """The id this request is known by (set by CatchAll before anything else runs)."""
    return str(scope.get("state", {}).get("request_id", ""))


class CatchAll:
    def __init__(self, app: ASGIApp, access_log: bool = True) -> None:
        self.app = app
        self.access_log = access_log

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started_at = time.perf_counter()
        given = next((value for key, value in scope["headers"] if key == _HEADER_KEY), b"")
        request_id = given.decode() if _GOOD_ID.fullmatch(given) else f"{_ID_PREFIX}{next(_ID_COUNTER):x}"
        scope.setdefault("state", {})["request_id"] = request_id
        token = logs.request_id.set(request_id)  # on every line logged while this request is handled
        status = 0

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", []), (_HEADER_KEY, request_id.encode())]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except ClientDisconnect:
            logger.info(
                "%s %s: client disconnected before its request was read (request id %s)",
                scope["method"],
                scope["path"][:200],
                request_id,
            )
        except Exception:
            logger.exception("%s %s failed (request id %s)", scope["method"], scope["path"][:200], request_id)
            if not status:
                response = error_response(500, "internal_error", "internal server error", request_id=request_id)
                await response(scope, receive, send_with_id)
        finally:
            if self.access_log:
                _log_access(scope, status, time.perf_counter() - started_at)
            logs.request_id.reset(token)


def _log_access(scope: Scope, status: int, seconds: float) -> None:
    """One line per request: what was asked (the route template, not the raw URL), of what, and how it went."""
    route = getattr(scope.get("route"), "path", None)
    state = scope.get("state", {})
    client = scope.get("client")
    fields = {
        "method": scope["method"],
        "route": route,
        "status": status or None,  # None: the client left before an answer
        "latency_ms": round(seconds * 1000, 2),
        "client": f"{client[0]}:{client[1]}" if client else None,
        **{key: state[key] for key in ACCESS_FIELDS if key in state},
    }
    # The message reads like a common access log ("client - "GET /path HTTP/1.1" 200"), which
    # log tooling and the container check's traffic count recognise; the fields ride as extras.
    access_logger.info(
        '%s - "%s %s HTTP/%s" %s %.1fms',
        fields["client"] or "-",
        scope["method"],
        scope["path"][:200],
        scope.get("http_version", "1.1"),
        status or "-",
        fields["latency_ms"],
        extra=fields,
    )
