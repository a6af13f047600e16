"""Request ids, access lines and JSON for every failure: the helpers the edge layer (app/edge.py) calls.

- `X-Request-ID`: the caller's (nginx sets one) when it is a short printable token, else a new one;
  echoed on every response and named in the log line and the body of a 500, so a user's report
  finds the traceback.
- An exception no handler took becomes a JSON 500 `{"error", "code": "internal_error",
  "request_id"}`, and its traceback is logged once (nothing is re-raised to the server, which
  would log it again).
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

from starlette.requests import ClientDisconnect
from starlette.types import Receive, Scope, Send

from app.http_errors import error_response

logger = logging.getLogger("pixelserve.errors")
access_logger = logging.getLogger("pixelserve.access")
# What routes may add to their access line through request.state (see app/routes/predict.py).
ACCESS_FIELDS = ("model", "version", "images")
REQUEST_ID_HEADER = "X-Request-ID"
REQUEST_ID_KEY = REQUEST_ID_HEADER.lower().encode()
_GOOD_ID = re.compile(rb"^[\x21-\x7e]{1,128}$")  # visible ASCII: safe in logs and headers
# Ids made here: a random prefix per process and a counter, unique across replicas and restarts
# without a uuid4 per request (py-spy: uuid4 was 7 % of a worker's samples at c=32).
_ID_PREFIX = f"{os.urandom(5).hex()}{os.getpid():x}-"
_ID_COUNTER = itertools.count(1)


def request_id_for(given: bytes) -> str:
    """The caller's id when it is a short printable token, else a new one."""
    return given.decode() if _GOOD_ID.fullmatch(given) else f"{_ID_PREFIX}{next(_ID_COUNTER):x}"


def request_id_of(scope: Scope) -> str:
    """The id this request is known by (set by the edge layer before anything else runs)."""
    return str(scope.get("state", {}).get("request_id", ""))


async def on_failure(
    exc: Exception, scope: Scope, receive: Receive, send: Send, request_id: str, started: bool
) -> None:
    """Log what escaped the app; answer a JSON 500 unless a response has started."""
    if isinstance(exc, ClientDisconnect):
        logger.info(
            "%s %s: client disconnected before its request was read (request id %s)",
            scope["method"],
            scope["path"][:200],
            request_id,
        )
        return
    logger.error("%s %s failed (request id %s)", scope["method"], scope["path"][:200], request_id, exc_info=exc)
    if not started:
        response = error_response(500, "internal_error", "internal server error", request_id=request_id)
        await response(scope, receive, send)


def log_access(scope: Scope, status: int, seconds: float) -> None:
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
