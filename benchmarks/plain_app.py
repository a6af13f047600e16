"""A plain, seed-style baseline server for `benchmarks.serve` to compare pixelserve with.

One sync route, Pillow's convert("L") + resize to 28x28 (no dataset recipe), one forward pass
per request. Start with `PLAIN_MODEL=path/to/model.pt uvicorn --factory benchmarks.plain_app:create_app`.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Annotated

import numpy as np
import torch
from fastapi import FastAPI, File, UploadFile
from PIL import Image

from app.core.artifacts import load_model


def create_app() -> FastAPI:
    torch.set_num_threads(1)
    model = load_model(Path(os.environ["PLAIN_MODEL"]), torch.device("cpu"))
    labels = model.labels
    app = FastAPI(title="plain baseline")

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/predict/{name}")
    def predict(name: str, file: Annotated[UploadFile, File()]) -> dict[str, object]:
        image = Image.open(io.BytesIO(file.file.read())).convert("L").resize((28, 28))
        pixels = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0)[None, None]
        with torch.inference_mode():
            probabilities = model.forward(pixels)[0].tolist()
        index = int(np.argmax(probabilities))
        return {"label": labels[index], "probabilities": dict(zip(labels, probabilities, strict=True))}

    return app
