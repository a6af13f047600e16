"""The full description of one training run: frozen, so what is exported is what ran."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class TrainConfig:
    model_name: str = "mnist"  # the served name: models/<model_name>/<version>/
    architecture: str = "mnist_cnn"
    dataset: str = "mnist"
    data_dir: Path | None = None  # folder of IDX files; None downloads with torchvision
    epochs: int = 12
    batch_size: int = 128
    lr: float = 3e-3  # peak of the one-cycle schedule
    weight_decay: float = 1e-4
    label_smoothing: float = 0.05
    augment: bool = True
    max_samples: int | None = None  # train on the first N images only (quick jobs, tests)
    seed: int = 1
    device: str = "auto"  # auto | cpu | cuda
    threads: int | None = None  # torch intra-op threads on CPU; None keeps torch's default
    dry_run: bool = False  # one epoch of a few batches, to check the whole path quickly

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["data_dir"] = str(self.data_dir) if self.data_dir is not None else None
        return out
