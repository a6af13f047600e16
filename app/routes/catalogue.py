"""GET /catalogue: the names a training job may use, for clients that build a form (the admin console)."""

from __future__ import annotations

from fastapi import APIRouter

from app.bodies import CatalogueBody, DatasetEntry
from app.core.catalogue import ARCHITECTURES, DATASETS, TrainingParameters

router = APIRouter(tags=["models"])

# Computed once: the catalogue is code, it cannot change while the server runs.
_CATALOGUE = CatalogueBody(
    architectures=list(ARCHITECTURES),
    datasets=[
        DatasetEntry(name=spec.name, labels=list(spec.labels), preprocessing=spec.preprocessing)
        for spec in DATASETS.values()
    ],
    parameters=TrainingParameters.model_json_schema(),
)


@router.get("/catalogue", response_model=CatalogueBody)
async def catalogue() -> CatalogueBody:
    """Architectures and datasets a training job may name (POST /train), and the training parameters' schema."""
    return _CATALOGUE
