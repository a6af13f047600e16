"""Helpers and constants the test modules import (conftest.py holds only the fixtures pytest injects)."""

from __future__ import annotations

import io
import os
import tempfile
from functools import cache
from pathlib import Path

import numpy as np
from PIL import Image

from benchmarks.servers import ROOT
from training.config import TrainConfig
from training.data import DATASETS
from training.datasets import resolve_dataset

SHIPPED_MODELS = ROOT / "models"
POSTGRES_URL = os.environ.get("PIXELSERVE_TEST_POSTGRES_URL")  # e.g. postgresql+psycopg://u:p@127.0.0.1/db


def dataset_dir(name: str) -> Path:
    """The folder of a set's IDX files: PIXELSERVE_DATA_DIR, ../shared/datasets, the user cache, else downloaded."""
    return resolve_dataset(name)


@cache
def _data_root() -> Path:
    """One folder holding mnist/ and fashion-mnist/, for the scripts that take a root."""
    folders = {name: dataset_dir(name) for name in DATASETS}
    parents = {folder.parent for folder in folders.values()}
    if len(parents) == 1:
        return parents.pop()
    root = Path(tempfile.mkdtemp(prefix="pixelserve-datasets-"))  # the sets came from different places
    for name, folder in folders.items():
        (root / name).symlink_to(folder, target_is_directory=True)
    return root


def __getattr__(name: str) -> Path:
    # DATA_ROOT is resolved when a test module imports it, not when conftest imports this module:
    # a run that needs no dataset never downloads one.
    if name == "DATA_ROOT":
        return _data_root()
    raise AttributeError(name)


def tiny_config(model: str, architecture: str, dataset: str, samples: int = 2048) -> TrainConfig:
    return TrainConfig(
        model_name=model, architecture=architecture, dataset=dataset, epochs=1, batch_size=64,
        max_samples=samples, seed=0, device="cpu",
    )  # fmt: skip


def encode(pixels: np.ndarray | Image.Image, fmt: str = "PNG", **options: object) -> bytes:
    image = pixels if isinstance(pixels, Image.Image) else Image.fromarray(pixels)
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()
