"""The one catalogue of names and parameters that every layer shares.

The API's bodies, the training worker, `python -m training` and the admin script all derive from
what is defined here: dataset specs, architecture names, job statuses and the training parameters
with their bounds. `training/` owns the code behind the names (its network registry checks at
import that it builds exactly these architectures); `app/` never imports `training/`.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Annotated, Literal, get_args

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StrictBool

Architecture = Literal["cnn5", "fashion_cnn", "fashion_dnn", "fashion_vgg", "mlp", "mnist_cnn"]
DatasetName = Literal["fashion-mnist", "mnist"]
ARCHITECTURES: tuple[str, ...] = get_args(Architecture)
# A model version: a positive integer in ASCII digits ('²'.isdigit() is true, int('²') fails), as folder names
# of the repository and as the API's path and body fields.
VERSION_PATTERN = r"^[1-9][0-9]{0,17}$"

MNIST_LABELS = tuple(str(digit) for digit in range(10))
FASHION_LABELS = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)


@dataclass(frozen=True)
class DatasetSpec:
    """What a served model needs to know about the data it was trained on."""

    name: str
    labels: tuple[str, ...]
    mean: float  # pixel statistics of the training set, pixels scaled to [0, 1]
    std: float
    preprocessing: str  # "digit" or "garment": the recipe the server applies to uploads


DATASETS: dict[str, DatasetSpec] = {
    "mnist": DatasetSpec("mnist", MNIST_LABELS, 0.1307, 0.3081, "digit"),
    "fashion-mnist": DatasetSpec("fashion-mnist", FASHION_LABELS, 0.2860, 0.3530, "garment"),
}
assert set(DATASETS) == set(get_args(DatasetName))


def get_dataset_spec(name: str) -> DatasetSpec:
    try:
        return DATASETS[name]
    except KeyError:
        raise ValueError(f"unknown dataset {name!r}; valid: {', '.join(sorted(DATASETS))}") from None


class JobStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    INTERRUPTED = "interrupted"


FINISHED = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED, JobStatus.INTERRUPTED})


def json_number(value: object) -> object:
    """JSON Schema's number and integer: 14.0 is an integer, "14" and false are not numbers at all."""
    if isinstance(value, str | bool):
        raise ValueError("must be a JSON number")
    return value


JsonInt = Annotated[int, BeforeValidator(json_number)]
JsonFloat = Annotated[float, BeforeValidator(json_number)]


class TrainingParameters(BaseModel):
    """How to train: the same fields, bounds and defaults for the API, the worker and both CLIs."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    epochs: JsonInt = Field(5, ge=1, le=100, description="passes over the training set")
    batch_size: JsonInt = Field(128, ge=8, le=4096, description="images per step")
    lr: JsonFloat = Field(3e-3, gt=0, le=1, description="peak learning rate of the one-cycle schedule")
    weight_decay: JsonFloat = Field(1e-4, ge=0, le=1, description="AdamW's decoupled weight decay")
    label_smoothing: JsonFloat = Field(0.05, ge=0, lt=1, description="of the cross-entropy targets")
    augment: StrictBool = Field(True, description="random affine warps, stroke width, mirroring (per dataset)")
    max_samples: Annotated[int, Field(ge=64, le=60000), BeforeValidator(json_number)] | None = Field(
        None, description="train on the first N images only (quick jobs, tests); the test set stays whole"
    )
    seed: JsonInt = Field(1, ge=0, le=2**31 - 1, description="for the initial weights, the order and augmentation")
    include_captures: StrictBool = Field(
        False, description="also train on the model's labelled captures (PIXELSERVE_CAPTURE), minus a held-out slice"
    )
    captures_weight: JsonInt = Field(1, ge=1, le=100, description="how many times a capture counts vs a dataset image")
    captures_held_out: JsonFloat = Field(
        0.2, ge=0, le=0.9, description="share of labelled captures kept out of training to measure capture_accuracy"
    )
    min_capture_accuracy: Annotated[float, Field(ge=0, le=1), BeforeValidator(json_number)] | None = Field(
        None, description="publication floor on the held-out captures (needs include_captures)"
    )
