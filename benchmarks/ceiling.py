"""Bare in-process ceilings of the serving benchmark: what the model path costs without HTTP or a server."""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from app.core.artifacts import load_model
from app.core.inference import preprocess, run_model
from app.core.settings import Settings
from benchmarks.loadgen import Sample


@dataclass(frozen=True)
class Ceiling:
    batch_size: int
    images_per_s: float
    repeats: list[float]


def bare_ceiling(artifact: Path, samples: list[Sample], batch_size: int, repeats: int, seconds: float) -> Ceiling:
    """Images/s of decode + recipe per image, then forwards of `batch_size` images, in this process, no HTTP."""
    torch.set_num_threads(1)
    model = load_model(artifact, torch.device("cpu"))
    max_pixels: int = Settings.model_fields["max_image_pixels"].default
    pngs = [sample.png for sample in samples]
    count = -(-len(pngs) // batch_size) * batch_size  # whole batches, the samples rotated
    batches = [[pngs[(start + i) % len(pngs)] for i in range(batch_size)] for start in range(0, count, batch_size)]

    def one_pass() -> None:
        for batch in batches:
            run_model(model, np.stack([preprocess(png, model.recipe, max_pixels) for png in batch]))

    one_pass()  # warm-up
    rates = []
    for _ in range(repeats):
        done, start = 0, time.perf_counter()
        while (elapsed := time.perf_counter() - start) < seconds:
            one_pass()
            done += count
        rates.append(done / elapsed)
    return Ceiling(batch_size, statistics.median(rates), rates)
