"""Shedding at the edge: under overload, a prediction is answered 503 for little more than reading it.

Past saturation a server has to refuse work for less than the work costs, or refusing becomes the
new bottleneck: a 503 raised from the route went through the whole FastAPI stack (routing,
dependencies, the exception handlers) and cost about half of a 200 here. The edge layer
(app/edge.py) asks the batcher (`Batcher.pressure`, O(1)) before anything else runs; when it would
shed, `shed` reads the body to its end (answering before the body makes the server close the
connection, and reconnects cost clients and the server more than the body did) and sends a 503
with `Retry-After`. What it does not shed, the route's own admission (`Batcher.admit`) still judges,
with the request's image count.
"""

from __future__ import annotations

import json

from starlette.types import Receive, Scope, Send

from app.core.batching import Batcher
from app.core.errors import Overloaded
from app.core.settings import OverloadPolicy

RETRY_AFTER_S = 1


def is_inference(scope: Scope) -> bool:
    path: str = scope["path"]
    return scope["method"] == "POST" and (
        path.startswith("/predict/") or (path.startswith("/v2/models/") and path.endswith("/infer"))
    )


def verdict(scope: Scope, policy: OverloadPolicy) -> tuple[Batcher, str, str] | None:
    """The batcher, the reason and the message when this inference request is to be shed now; else None."""
    batcher: Batcher | None = getattr(scope["app"].state, "batcher", None)
    pressure = batcher.pressure(policy) if batcher is not None else None
    if pressure is None or batcher is None:
        return None
    return batcher, *pressure


async def shed(receive: Receive, send: Send, batcher: Batcher, reason: str, message: str, max_body_bytes: int) -> None:
    batcher.shed_early(reason)
    received, more = 0, True
    while more and received <= max_body_bytes:  # past the body limit: answer, the server closes
        chunk = await receive()
        if chunk["type"] != "http.request":
            return  # the client left
        received += len(chunk.get("body", b""))
        more = chunk.get("more_body", False)
    body = json.dumps({"error": message, "code": Overloaded.code}).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"retry-after", str(RETRY_AFTER_S).encode()),
    ]
    await send({"type": "http.response.start", "status": 503, "headers": headers})
    await send({"type": "http.response.body", "body": body})
