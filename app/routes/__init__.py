"""HTTP routers, one per resource, gathered once in `api_router`; admin routers behind one guard."""

from fastapi import APIRouter, Depends

from app.core.errors import Forbidden, Unauthorized
from app.deps import require_admin
from app.http_errors import responses
from app.routes import captures, catalogue, health, models, predict, rollout, train, ui, versions
from app.routes.v2 import router as v2_router

api_router = APIRouter()
# First: FastAPI matches included routers in order, each try a walk through nested routers (cProfile: predict's
# ~290 more Python calls when it came third: benchmarks/request_calls.py). No other path starts with /predict.
api_router.include_router(predict.router)
api_router.include_router(health.router)
api_router.include_router(models.router)
api_router.include_router(v2_router)
api_router.include_router(catalogue.router)
api_router.include_router(ui.router)  # the browser pages (PIXELSERVE_UI)

# app.admin_gate authenticates these paths before their bodies
ADMIN_ROUTERS = (train.router, versions.router, rollout.router, captures.router)
for admin_router in ADMIN_ROUTERS:
    api_router.include_router(
        admin_router, dependencies=[Depends(require_admin)], responses=responses(Unauthorized, Forbidden)
    )
