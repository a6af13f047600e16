"""HTTP routers, one per resource, gathered once in `api_router`."""

from fastapi import APIRouter

from app.routes import health, models, predict

api_router = APIRouter()
api_router.include_router(health.router)
api_router.include_router(models.router)
api_router.include_router(predict.router)
