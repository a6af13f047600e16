"""Request count and latency by route template, recorded by the edge layer (app/edge.py) after the app ran.

Labels come from what the app decided: the matched route's template (`scope["route"].path`, e.g.
/predict/{name}; "unmatched" for a URL no route takes), and for a route with a `{name}` the model
only if the registry knows it (served, or configured and failing), else "unknown": a 404 for a
random name adds no label value. The version is the one the route answered with
(`request.state.version`, set by the predict routes) or else the one served now.
"""

from __future__ import annotations

from starlette.types import Scope

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


def record(scope: Scope, status: int, seconds: float) -> None:
    """Status 0: no answer (the client left, or the request was cancelled): counted as "none"."""
    route = getattr(scope.get("route"), "path", None) or "unmatched"
    model, version = _model_labels(scope)
    metrics.request_done(route, scope["method"], model, version, status, seconds)
