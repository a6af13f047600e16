"""TorchServe custom handler for `benchmarks.serve`: pixelserve's preprocessing and artifact, TorchServe's batching.

TorchServe imports this file in each Python worker (the repository root must be on PYTHONPATH) and
calls `handle(None, context)` once at load, then `handle(batch, context)` with one dict per request.
The frontend splits a multipart upload into its form fields, so the image bytes arrive under
`file` (the field's name); `data` and `body` are where raw (non-form) bodies land.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from app.core.artifacts import LoadedModel, load_model
from app.core.inference import Prediction, run_model, to_model_input
from app.core.settings import Settings

MAX_PIXELS: int = Settings.model_fields["max_image_pixels"].default
UPLOAD_KEYS = ("file", "data", "body")
_loaded: dict[str, LoadedModel] = {}


def _upload(request: dict[str, Any]) -> bytes:
    for key in UPLOAD_KEYS:
        value = request.get(key)
        if isinstance(value, bytes | bytearray):
            return bytes(value)
    raise ValueError(f"no image bytes under {UPLOAD_KEYS}; the request has {sorted(request)}")


def _model(context: Any) -> LoadedModel:
    if "model" not in _loaded:
        torch.set_num_threads(1)  # as every server in the benchmark
        manifest = getattr(context, "manifest", None) or {}
        serialized = manifest.get("model", {}).get("serializedFile", "model.pt")  # the archived copy of model.pt
        _loaded["model"] = load_model(Path(context.system_properties["model_dir"]) / serialized, torch.device("cpu"))
    return _loaded["model"]


def handle(data: list[dict[str, Any]] | None, context: Any) -> list[dict[str, object]] | None:
    model = _model(context)
    if data is None:  # the load-time call
        return None
    pixels = np.stack([to_model_input(_upload(request), model.recipe, MAX_PIXELS) for request in data])
    rows = run_model(model, pixels)
    return [Prediction(model.name, model.version, model.labels, row).to_json() for row in rows]
