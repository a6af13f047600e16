"""From upload bytes to class probabilities: decode, the model's recipe, one forward pass.

Synchronous and CPU-bound: the batching threads run it (app/core/batching.py), never the event loop.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

from app.core.artifacts import LoadedModel
from app.core.errors import PixelserveError
from app.core.imaging import decode_light_on_dark
from app.core.onnx_runtime import OnnxForward
from app.core.preprocessing import apply_recipe


@dataclass(frozen=True)
class Prediction:
    model: str
    version: str
    labels: list[str]
    probabilities: list[float]

    @property
    def index(self) -> int:
        return int(np.argmax(self.probabilities))

    def to_json(self, top_k: int | None = None) -> dict[str, object]:
        index = self.index
        body: dict[str, object] = {
            "model": self.model,
            "version": self.version,
            "label": self.labels[index],
            "index": index,
            "confidence": self.probabilities[index],
            "probabilities": dict(zip(self.labels, self.probabilities, strict=True)),
        }
        if top_k is not None:
            order = sorted(range(len(self.labels)), key=lambda i: -self.probabilities[i])[:top_k]
            body["top_k"] = [{"label": self.labels[i], "probability": self.probabilities[i]} for i in order]
        return body


def to_model_input(data: bytes | Image.Image, recipe: str, max_pixels: int) -> np.ndarray:
    """Upload bytes -> float32 [28, 28] in [0, 1], light on dark, as the dataset looks.

    The upload pipeline in one call: decode (app.core.imaging.decode_light_on_dark: any format and
    mode, bounded, light on dark), then the model's recipe (app.core.preprocessing.apply_recipe).
    """
    return apply_recipe(decode_light_on_dark(data, max_pixels), recipe)


def run_model(model: LoadedModel, pixels: np.ndarray) -> list[list[float]]:
    """pixels float32 [N, 28, 28] -> probabilities [N, C] as Python floats."""
    batch = np.ascontiguousarray(pixels[:, None], dtype=np.float32)  # [N, 1, 28, 28]
    if isinstance(model.forward, OnnxForward):  # NumPy in and out: no torch in the path (nor installed, maybe)
        rows: list[list[float]] = model.forward.run(batch).tolist()
    else:
        rows = _run_torch(model, batch)
    # Renormalise in float64 (Python floats) so the JSON values sum to 1 as closely as floats allow.
    normalised = []
    for row in rows:
        total = math.fsum(row)
        normalised.append([p / total for p in row])
    return normalised


def _run_torch(model: LoadedModel, batch: np.ndarray) -> list[list[float]]:
    import torch  # a dictionary lookup once imported; the slim image never gets here

    # Few torch calls per request: each one releases and retakes the GIL, which costs more than
    # the arithmetic under concurrency.
    tensor = torch.from_numpy(batch)
    if model.device.type != "cpu":
        tensor = tensor.to(str(model.device))
    with torch.inference_mode():
        rows: list[list[float]] = model.forward(tensor).tolist()
    return rows


def prepare_uploads(images: Sequence[bytes | Image.Image], recipe: str, max_pixels: int) -> np.ndarray:
    """Each image (bytes, or opened by `open_image`) through the recipe -> float32 [k, 28, 28].

    An error names the bad file.
    """
    pixels = np.empty((len(images), 28, 28), dtype=np.float32)
    for position, data in enumerate(images):
        try:
            pixels[position] = to_model_input(data, recipe, max_pixels)
        except PixelserveError as exc:
            if len(images) > 1:
                exc.message = f"file {position + 1} of {len(images)}: {exc.message}"
            raise
    return pixels
