"""Request count and latency by route template, as a pure ASGI middleware (the outermost layer).

Labels come from what the app decided, read after it ran: the matched route's template
(`scope["route"].path`, e.g. /predict/{name}; "unmatched" for a URL no route takes), and for a
route with a `{name}` the model only if the registry knows it (served, or configured and failing),
else "unknown": a 404 for a random name adds no label value. The version is the one the route
answered with (`request.state.version`, set by the predict routes) or else the one served now.
"""

from __future__ import annotations

import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.core import metrics
from app.core.registry import ModelRegistry


def _model_labels(scope: Scope) -> tuple[str, str]:
    name = scope.get("path_params", {}).get("name")
    if name is None:
        return "", ""
    app = scope.get("app")
    registry: ModelRegistry | None = getattr(getattr(app, "state", None), "registry", None)
    if registry is None:
        return "unknown", ""
    loaded = registry.models.get(name)
    if loaded is None:
        # Configured but not loaded (its 503 says why): a bounded name; anything else is not.
        return (name, "") if name in registry.errors else ("unknown", "")
    state = scope.get("state", {})
    version = state.get("version") if state.get("model") == name else None
    return name, str(version) if version is not None else loaded.version


class RequestMetrics:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 0

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        except Exception:
            status = status or 500  # what the server answers for an exception nobody handled
            raise  # (a cancelled request, its client gone, keeps status 0: "none")
        finally:
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            model, version = _model_labels(scope)
            metrics.request_done(route, scope["method"], model, version, status, time.perf_counter() - started)
