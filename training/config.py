"""The full description of one training run: frozen, so what is exported is what ran.

`TrainConfig` is the shared `TrainingParameters` (app.core.catalogue: the API's training body, the
worker and both command lines use the same fields, bounds and defaults) plus what only a run on
this machine knows: the served name, where the data is, the device.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from app.core.catalogue import Architecture, DatasetName, TrainingParameters
from app.core.repository import MODEL_NAME


class TrainConfig(TrainingParameters):
    model_name: str = Field("mnist", pattern=MODEL_NAME, description="the served name: models/<name>/<version>/")
    architecture: Architecture = Field("mnist_cnn", description="a network of training.networks")
    dataset: DatasetName = Field("mnist", description="the set to train and evaluate on")
    data_dir: Path | None = Field(None, description="folder of the four IDX files; default: found or downloaded")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="where to train")
    threads: int | None = Field(None, ge=1, description="torch CPU threads; default: torch's")
    dry_run: bool = Field(False, description="one epoch of three batches, to check the whole path quickly")

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json")
