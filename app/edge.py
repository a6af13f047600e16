"""The one ASGI layer every HTTP request passes before routing: app/main.py installs it outermost.

What it does, in order, with one `send` wrapper and one pass over the headers:
1. a request id (app/catch_all.py), set on `scope["state"]` and on every log line meanwhile;
2. early shedding of inference requests under overload (app/shed_early.py);
3. the admin gate: 401/403 from the headers, bounded body, before routing (app/admin_gate.py);
4. the body size limit, declared or streamed (app/limits.py);
5. the app; whatever escapes it is logged and answered as a JSON 500 (app/catch_all.py);
6. the access line, and the request's count and latency (app/request_metrics.py).

It replaces five layers that did the same one by one (RequestMetrics, CatchAll, ShedEarly, AdminGate,
BodySizeLimit): each had its own coroutine frame, `send` wrapper and header scan, and together they were
half of a worker's samples at c=32 (benchmarks/hot_path.py). The order of the checks is theirs.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app import limits, request_metrics, shed_early
from app.admin_gate import AdminGate
from app.catch_all import REQUEST_ID_KEY, log_access, on_failure, request_id_for
from app.core import logs
from app.core.errors import BodyTooLarge
from app.core.settings import Settings
from app.http_errors import error_response

_CONTENT_LENGTH = b"content-length"
_TRANSFER_ENCODING = b"transfer-encoding"
_AUTHORIZATION = b"authorization"


class Edge:
    def __init__(self, app: ASGIApp, settings: Settings, admin_routes: Iterable[BaseRoute]) -> None:
        self.app = app
        self.max_body_bytes = settings.max_body_bytes
        self.policy = settings.overload
        self.access_log = settings.access_log
        self.admin = AdminGate(settings, admin_routes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started_at = time.perf_counter()
        # One pass: the first X-Request-ID (as before), the last Content-Length and Authorization.
        given, declared, authorization, chunked = b"", None, b"", False
        for key, value in scope["headers"]:
            if key == REQUEST_ID_KEY:
                given = given or value
            elif key == _CONTENT_LENGTH:
                declared = value
            elif key == _AUTHORIZATION:
                authorization = value
            elif key == _TRANSFER_ENCODING:
                chunked = True
        request_id = request_id_for(given)
        scope.setdefault("state", {})["request_id"] = request_id
        token = logs.request_id.set(request_id)  # on every line logged while this request is handled
        id_header = (REQUEST_ID_KEY, request_id.encode())
        status = 0

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", []), id_header]
            await send(message)

        try:
            await self._handle(scope, receive, send_with_id, declared, authorization, chunked)
        except Exception as exc:
            await on_failure(exc, scope, receive, send_with_id, request_id, started=bool(status))
        finally:
            seconds = time.perf_counter() - started_at
            if self.access_log:
                log_access(scope, status, seconds)
            request_metrics.record(scope, status, seconds)
            logs.request_id.reset(token)

    async def _handle(
        self, scope: Scope, receive: Receive, send: Send, declared: bytes | None, authorization: bytes, chunked: bool
    ) -> None:
        if shed_early.is_inference(scope):
            if (verdict := shed_early.verdict(scope, self.policy)) is not None:
                await shed_early.shed(receive, send, *verdict, self.max_body_bytes)
                return
        elif self.admin.paths and self.admin.guards(scope["path"]):
            replay = await self.admin.gate(scope, receive, send, authorization, declared)
            if replay is None:
                return
            receive = replay
        if limits.declared_over(declared, self.max_body_bytes):
            message = limits.too_large_message(self.max_body_bytes)
            await error_response(413, BodyTooLarge.code, message)(scope, receive, send)
            return
        if limits.needs_counting(declared, chunked):
            receive = limits.counting(receive, self.max_body_bytes)
        await self.app(scope, receive, send)
