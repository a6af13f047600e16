"""Triton python-backend model for `benchmarks.serve`: copied as models/<name>/1/model.py by triton_setup.

Runs inside Triton's backend stub (benchmarks/.venv-triton's interpreter), one process per instance:
each request's IMAGE is a BYTES tensor [1, 1] holding the PNG as base64 (OIP v2 JSON carries BYTES as
strings), decoded and passed through pixelserve's recipe (`app.core.inference`, on the path through
PYTHONPATH), then one forward pass of the same TorchScript module over the whole dynamic batch, one
torch thread. Answers PROBABILITIES FP32 [1, C] and LABEL INT64 [1, 1] per request.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
import triton_python_backend_utils as pb_utils  # only inside Triton's stub

from app.core.artifacts import load_model
from app.core.inference import prepare_uploads
from app.core.optimize import optimized

MAX_PIXELS = 40_000_000  # like the server's default bound: decoding is bounded, not skipped


class TritonPythonModel:
    def initialize(self, args: dict[str, Any]) -> None:
        torch.set_num_threads(1)
        torch.set_num_interop_threads(1)
        folder = Path(args["model_repository"]) / args["model_version"]
        self.model = optimized(load_model(folder / "model.pt", torch.device("cpu")))
        self.config = json.loads(args["model_config"])

    def execute(self, requests: list[Any]) -> list[Any]:
        pngs = []
        for request in requests:
            value = pb_utils.get_input_tensor_by_name(request, "IMAGE").as_numpy().reshape(-1)[0]
            pngs.append(base64.b64decode(value))
        pixels = prepare_uploads(pngs, self.model.recipe, MAX_PIXELS)  # [N, 28, 28]; a bad image fails the batch
        with torch.inference_mode():
            probabilities = self.model.forward(torch.from_numpy(pixels[:, None])).numpy()
        labels = probabilities.argmax(axis=1).astype(np.int64)
        return [
            pb_utils.InferenceResponse(
                output_tensors=[
                    pb_utils.Tensor("PROBABILITIES", probabilities[i : i + 1].astype(np.float32)),
                    pb_utils.Tensor("LABEL", labels[i : i + 1].reshape(1, 1)),
                ]
            )
            for i in range(len(requests))
        ]
