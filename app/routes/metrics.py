"""GET /metrics: Prometheus text format, or OpenMetrics when the Accept header asks for it.

Mounted on the main port only when PIXELSERVE_METRICS_PORT is unset; with it, the metrics port
serves the same registry (app/core/metrics_export.py) and the load balancer never sees it.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Request
from fastapi.responses import Response
from prometheus_client.exposition import choose_encoder

router = APIRouter(tags=["metrics"])


# Not in the OpenAPI document: an operator's endpoint, not part of the API contract.
# A plain def: merging workers' files and querying the job store must not block the event loop.
@router.get("/metrics", include_in_schema=False)
def scrape(request: Request, accept: Annotated[str, Header()] = "") -> Response:
    encoder, content_type = choose_encoder(accept)
    return Response(encoder(request.app.state.metrics_registry), headers={"Content-Type": content_type})
