"""HTTP routers, one per resource, gathered once in `api_router`."""

from fastapi import APIRouter

from app.routes import health, models, predict, train, versions

api_router = APIRouter()
api_router.include_router(health.router)
api_router.include_router(models.router)
api_router.include_router(predict.router)
api_router.include_router(train.router)
api_router.include_router(versions.router)
