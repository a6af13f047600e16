"""LitServe peer for `benchmarks.serve`: pixelserve's preprocessing and artifact, LitServe's batching.

    python -m benchmarks.litserve_app --artifact models/mnist/1/model.pt --port 8000

LitServe parses the multipart form in its API server process and hands it to one inference worker
process, which decodes each `file` upload with `app.core.inference.to_model_input` and runs batches of up to
`--max-batch-size` through `app.core.inference.run_model`. Answers POST /predict with pixelserve's JSON.
"""

import argparse
from pathlib import Path
from typing import Any

import litserve as ls
import numpy as np
import torch
from fastapi import Request

from app.core.artifacts import LoadedModel, load_model
from app.core.inference import Prediction, run_model, to_model_input
from app.core.settings import Settings

MAX_PIXELS: int = Settings.model_fields["max_image_pixels"].default


class DigitAPI(ls.LitAPI):  # type: ignore[misc]
    def __init__(self, artifact: Path, max_batch_size: int, batch_timeout: float) -> None:
        super().__init__(max_batch_size=max_batch_size, batch_timeout=batch_timeout, api_path="/predict")
        self.artifact = artifact
        self.model: LoadedModel | None = None

    def setup(self, device: str) -> None:
        torch.set_num_threads(1)  # as every server in the benchmark
        self.model = load_model(self.artifact, torch.device("cpu"))

    def _loaded(self) -> LoadedModel:
        assert self.model is not None, "setup() runs first"
        return self.model

    # No `from __future__ import annotations` here: LitServe reads this annotation at run time, and
    # `Request` makes it pass the parsed multipart form (a FormData, not the Request itself).
    def decode_request(self, request: Request, **kwargs: Any) -> np.ndarray:
        upload = request["file"]
        return to_model_input(upload.file.read(), self._loaded().recipe, MAX_PIXELS)

    def batch(self, inputs: list[np.ndarray]) -> np.ndarray:
        return np.stack(inputs)

    def predict(self, x: np.ndarray, **kwargs: Any) -> list[list[float]] | list[float]:
        if x.ndim == 2:  # unbatched (max_batch_size 1): one [28, 28] image, one row back
            return run_model(self._loaded(), x[None])[0]
        return run_model(self._loaded(), x)

    def unbatch(self, output: Any) -> list[list[float]]:  # predict's rows, one per request of the batch
        return list(output)

    def encode_response(self, output: list[float], **kwargs: Any) -> dict[str, object]:
        model = self._loaded()
        return Prediction(model.name, model.version, model.labels, output).to_json()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.litserve_app", description=__doc__.splitlines()[0])
    parser.add_argument("--artifact", type=Path, required=True, help="a TorchScript model.pt")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--max-batch-size", type=int, default=16)
    parser.add_argument("--batch-timeout", type=float, default=0.002, help="seconds to wait for a fuller batch")
    parser.add_argument("--workers", type=int, default=1, help="inference worker processes")
    args = parser.parse_args()
    api = DigitAPI(args.artifact.resolve(), args.max_batch_size, args.batch_timeout)
    server = ls.LitServer(api, accelerator="cpu", devices=1, workers_per_device=args.workers)
    server.run(host=args.host, port=args.port, log_level="warning", generate_client_file=False, access_log=False)


if __name__ == "__main__":
    main()
